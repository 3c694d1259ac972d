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
