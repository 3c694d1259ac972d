{{/* ---------------------------------------------------------------- shared pod parts */}}

{{/* Render-time checks (sizing, time limits, autoscaling, ...) are in _validate.tpl: imagineer.validateValues. */}}

{{/* Every queue an enabled group consumes, as a YAML list. */}}
{{- define "imagineer.consumedQueues" -}}
{{- $queues := list -}}
{{- range $name, $_ := .Values.workers -}}
{{- $g := fromYaml (include "imagineer.group" (dict "root" $ "name" $name)) -}}
{{- if $g.enabled -}}
{{- /* a group without queues is refused by imagineer.validateValues */ -}}
{{- $queues = concat $queues ($g.queues | default list) -}}
{{- end -}}
{{- end -}}
{{- toYaml ($queues | uniq | sortAlpha) -}}
{{- end -}}

{{/* Where broker.caSecret is mounted, and the CA bundle in it (workers, beat, Flower, exporter). */}}
{{- define "imagineer.redisCaDir" -}}
/etc/imagineer/redis-ca
{{- end -}}

{{- define "imagineer.redisCaFile" -}}
{{ include "imagineer.redisCaDir" . }}/{{ .Values.broker.caSecretKey }}
{{- end -}}

{{/* The environment every worker and beat container shares: the guide's variables, one source. */}}
{{- define "imagineer.env" -}}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "imagineer.secretName" . }}
      key: {{ .Values.broker.existingSecretBrokerUrlKey }}
- name: CELERY_RESULT_BACKEND
  valueFrom:
    secretKeyRef:
      name: {{ include "imagineer.secretName" . }}
      key: {{ .Values.broker.existingSecretResultBackendKey }}
- name: CELERY_RESULT_EXPIRES
  value: {{ .Values.celery.resultExpiresSeconds | int | quote }}
- name: IMAGINEER_CONFIG
  value: /etc/imagineer/config/config.yaml
- name: IMAGINEER_MAINTENANCE_QUEUE
  value: {{ .Values.config.maintenanceQueue | quote }}
# The queues this release's groups consume: what `imagineer-workers doctor` checks by default.
- name: IMAGINEER_EXPECTED_QUEUES
  value: {{ include "imagineer.consumedQueues" . | fromYamlArray | join "," | quote }}
- name: IMAGINEER_PURGE_TRAINING_HOUR
  value: {{ .Values.config.purgeTrainingHour | int | quote }}
- name: IMAGINEER_PURGE_SCRAPE_HOUR
  value: {{ .Values.config.purgeScrapeHour | int | quote }}
- name: IMAGINEER_DISK_SAMPLE_HOURS
  value: {{ .Values.config.diskSampleHours | int | quote }}
- name: IMAGINEER_DISK_SAMPLE_MINUTES
  value: {{ .Values.config.diskSampleMinutes | int | quote }}
- name: IMAGINEER_TASK_SOFT_TIME_LIMIT
  value: {{ .Values.celery.softTimeLimitSeconds | int | quote }}
- name: IMAGINEER_TASK_TIME_LIMIT
  value: {{ .Values.celery.hardTimeLimitSeconds | int | quote }}
- name: IMAGINEER_VISIBILITY_TIMEOUT
  value: {{ .Values.celery.visibilityTimeoutSeconds | int | quote }}
- name: IMAGINEER_MAX_DELIVERIES
  value: {{ .Values.config.maxDeliveries | int | quote }}
- name: IMAGINEER_DEAD_LETTER_MAX_LENGTH
  value: {{ .Values.config.deadLetterMaxLength | int | quote }}
- name: IMAGINEER_DATA_DIR
  value: {{ .Values.persistence.mountPath | quote }}
- name: IMAGINEER_HEALTH_DIR
  value: /tmp/imagineer-health
{{- if .Values.broker.caSecret }}
- name: IMAGINEER_REDIS_CA_CERT
  value: {{ include "imagineer.redisCaFile" . }}
{{- end }}
{{- with .Values.broker.sentinelMaster }}
- name: IMAGINEER_REDIS_SENTINEL_MASTER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.broker.keyPrefix }}
- name: IMAGINEER_REDIS_KEY_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Call with (dict "root" $ "data" true|false): beat needs no data volume. */}}
{{- define "imagineer.volumeMounts" -}}
{{- with .root }}
- name: tmp
  mountPath: /tmp
{{- /* a directory, not a subPath: subPath mounts never see ConfigMap updates, so no reload */}}
- name: config
  mountPath: /etc/imagineer/config
  readOnly: true
{{- if $.data }}
- name: data
  mountPath: {{ .Values.persistence.mountPath }}
{{- end }}
{{- if .Values.broker.caSecret }}
- name: redis-ca
  mountPath: {{ include "imagineer.redisCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "imagineer.volumes" -}}
{{- with .root }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: config
  configMap:
    name: {{ include "imagineer.fullname" . }}
{{- if $.data }}
- name: data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "imagineer.claimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
{{- if .Values.broker.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.broker.caSecret }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Pod annotations that roll the pods when the broker Secret's values change, and when config.yaml
changes unless config.rollOnChange is false (then the workers reload it in place). Hashes of the
values, not of the rendered files, so each template renders on its own (helm-unittest).
*/}}
{{- define "imagineer.checksums" -}}
{{- if .Values.config.rollOnChange }}
checksum/config: {{ toYaml .Values.config.file | sha256sum }}
{{- end }}
checksum/secret: {{ toYaml .Values.broker | sha256sum }}
{{- end -}}

{{/* Identity, security and scheduling every pod shares; call with (dict "root" $ "values" <the component's values>). */}}
{{- define "imagineer.podBasics" -}}
serviceAccountName: {{ include "imagineer.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}
