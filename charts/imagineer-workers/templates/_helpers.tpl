{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "imagineer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "imagineer.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "imagineer.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "imagineer.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "imagineer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; call with (dict "root" $ "component" "training"). */}}
{{- define "imagineer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagineer.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* The recommended labels; call with (dict "root" $ "component" "training"). */}}
{{- define "imagineer.labels" -}}
{{ include "imagineer.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: imagineer
helm.sh/chart: {{ include "imagineer.chart" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "imagineer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "imagineer.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "imagineer.secretName" -}}
{{- default (include "imagineer.fullname" .) .Values.broker.existingSecret -}}
{{- end -}}

{{- define "imagineer.claimName" -}}
{{- default (printf "%s-data" (include "imagineer.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Image reference; call with (dict "root" $ "image" <override map or nil>). */}}
{{- define "imagineer.image" -}}
{{- $img := merge (dict) (.image | default dict) .root.Values.image -}}
{{- $repo := $img.repository | default .root.Values.image.repository -}}
{{- $tag := $img.tag | default .root.Chart.AppVersion -}}
{{- if $img.registry -}}
{{- printf "%s/%s:%s" $img.registry $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- worker groups */}}

{{/*
A group's effective values: workerDefaults overridden by workers.<name>. Returned as YAML, so
callers use (fromYaml (include "imagineer.group" (dict "root" $ "name" $name))).
*/}}
{{- define "imagineer.group" -}}
{{- $group := index .root.Values.workers .name -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy $group)) -}}
{{- end -}}

{{/* A memory quantity (16Gi, 512Mi, 2G, 1500M, 128974848) in GiB as a float; 0 when empty.
Every suffix Kubernetes accepts, as the schema's pattern lists them: Ki Mi Gi Ti Pi Ei, k M G T P E,
m (milli). Anything else fails naming the value instead of reading as 0. */}}
{{- define "imagineer.memoryGi" -}}
{{- $q := ternary (printf "%.0f" (float64 .)) (toString .) (or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .)) -}}
{{- $units := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- $re := "^([0-9]+(?:\\.[0-9]+)?)([a-zA-Z]*)$" -}}
{{- $suffix := regexReplaceAll $re $q "${2}" -}}
{{- if not $q -}}
0
{{- else if not (and (regexMatch $re $q) (hasKey $units $suffix)) -}}
{{- fail (printf "%q is not a memory quantity Kubernetes accepts: a number with one of the suffixes Ki Mi Gi Ti Pi Ei, k M G T P E, m" $q) -}}
{{- else -}}
{{- divf (mulf (float64 (regexReplaceAll $re $q "${1}")) (get $units $suffix)) 1073741824.0 -}}
{{- end -}}
{{- end -}}

{{/* `celery worker` arguments built from the structured values (or the `args` escape hatch). */}}
{{- define "imagineer.workerArgs" -}}
{{- $g := .group -}}
{{- if $g.args -}}
{{- toYaml $g.args -}}
{{- else -}}
{{- /* No mingle (it waits a second at start-up for other workers' revoked ids: nothing here revokes) and no
gossip (peers' heartbeats, which nothing here reads): start-up in under a second (docs/benchmarks.md). */}}
{{- $args := list "-A" .root.Values.celery.app "worker" "--pool=prefork" (printf "--loglevel=%s" .root.Values.celery.loglevel) "-Q" (join "," $g.queues) (printf "--concurrency=%d" (int $g.concurrency)) (printf "--hostname=%s@%%h" .name) "--without-mingle" "--without-gossip" -}}
{{- toYaml (concat $args ($g.extraArgs | default list)) -}}
{{- end -}}
{{- end -}}

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

{{/* ---------------------------------------------------------------- exporter, monitoring, flower */}}

{{/*
The workers keep what they cannot run in a dead-letter list per queue, `<queue>.dead` (the worker
package's DEAD_SUFFIX). Such a list is never consumed: every rule and dashboard query about
queues and their workers leaves these names out, and ImagineerDeadLetters reads only them.
*/}}
{{- define "imagineer.deadSuffix" -}}
.dead
{{- end -}}

{{/* PromQL matcher for queue_name: "a dead-letter list" (with "=~") or "not one" (with "!~"). */}}
{{- define "imagineer.promql.deadQueues" -}}
".+\\.dead"
{{- end -}}

{{/* Consumed queues plus exporter.extraQueues, dead-letter lists left out: what ImagineerQueueWithoutWorkers watches. */}}
{{- define "imagineer.monitoredQueues" -}}
{{- $queues := list -}}
{{- range concat (include "imagineer.consumedQueues" . | fromYamlArray) .Values.exporter.extraQueues -}}
{{- if not (hasSuffix (include "imagineer.deadSuffix" $) .) -}}
{{- $queues = append $queues . -}}
{{- end -}}
{{- end -}}
{{- toYaml ($queues | uniq | sortAlpha) -}}
{{- end -}}

{{/*
The queues the exporter reports (--queues): every queue an enabled group consumes, its dead-letter
list `<queue>.dead`, and exporter.extraQueues. The exporter reads LLEN of each one on every
scrape, consumed or not, so celery_queue_length{queue_name="<queue>.dead"} exists (0) from the start.
*/}}
{{- define "imagineer.exporterQueues" -}}
{{- $consumed := include "imagineer.consumedQueues" . | fromYamlArray -}}
{{- $queues := concat $consumed .Values.exporter.extraQueues -}}
{{- range $consumed -}}
{{- $queues = append $queues (printf "%s%s" . (include "imagineer.deadSuffix" $)) -}}
{{- end -}}
{{- toYaml ($queues | uniq | sortAlpha) -}}
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

{{- define "imagineer.flowerSecretName" -}}
{{- default (printf "%s-flower" (include "imagineer.fullname" .)) .Values.flower.basicAuth.existingSecret -}}
{{- end -}}


{{/* How long record_disk_usage may go without a successful run before beat counts as broken:
twice its interval (one whole run missed, the next one late), at least the guide's 12 hours. The
same rule as `imagineer-workers doctor` (imagineer_worker.doctor.beat_max_age_hours), so the
alert and the check agree and a 12-hour interval (staging) cannot sit on the edge. */}}
{{- define "imagineer.beatMaxAge" -}}
{{- $c := .Values.config -}}
{{- $interval := ternary (int $c.diskSampleMinutes) (mul (int $c.diskSampleHours) 60) (gt (int $c.diskSampleMinutes) 0) -}}
{{- $minutes := max 720 (mul 2 $interval) -}}
{{- if eq (mod $minutes 60) 0 }}{{ div $minutes 60 }}h{{ else }}{{ $minutes }}m{{ end -}}
{{- end -}}

{{/*
PromQL, per series: how much counter .metric{.selector} counted within .window, robust to the
exporter's restarts and purges: the increase of a series that existed when the window began, the
whole value of a series born inside it (a new series' first count is invisible to increase()).
Wrap it in sum/sum by. Call with (dict "metric" "celery_task_succeeded_total" "selector" `name="x"` "window" "12h").
*/}}
{{- define "imagineer.promql.runs" -}}
{{- $s := ternary (printf "%s{%s}" .metric .selector) .metric (ne .selector "") -}}
increase({{ $s }}[{{ .window }}]) and {{ $s }} offset {{ .window }} or last_over_time({{ $s }}[{{ .window }}]) unless {{ $s }} offset {{ .window }}
{{- end -}}

{{/*
PromQL: no count within .window, or no series at all for the whole window (beat never ran, the
exporter restarted and saw nothing since). Neither branch has labels: one alert identity either way.
*/}}
{{- define "imagineer.promql.noRunWithin" -}}
sum({{ include "imagineer.promql.runs" . }}) < 1
or
max(absent_over_time({{ .metric }}{ {{- .selector -}} }[{{ .window }}]))
{{- end -}}
