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
