{{/* ---------------------------------------------------------------- PodDisruptionBudgets (workers.<group>.pdb) */}}

{{/*
The most and the fewest pods a group runs: autoscaling.maxReplicas / minReplicas when the group
autoscales, else replicas for both. A budget is rendered when the most is above 1 (with maxUnavailable
it never blocks a drain, even while the group runs one pod); imagineer.validate.pdb (_validate.tpl)
checks minAvailable against the fewest.
*/}}
{{- define "imagineer.pdb.maxPods" -}}
{{- if dig "autoscaling" "enabled" false .group -}}
{{- dig "autoscaling" "maxReplicas" 1 .group | int -}}
{{- else -}}
{{- .group.replicas | default 0 | int -}}
{{- end -}}
{{- end -}}

{{- define "imagineer.pdb.minPods" -}}
{{- if dig "autoscaling" "enabled" false .group -}}
{{- dig "autoscaling" "minReplicas" 1 .group | int -}}
{{- else -}}
{{- .group.replicas | default 0 | int -}}
{{- end -}}
{{- end -}}

{{/* "true" when a group's pdb block sets minAvailable (it then wins over maxUnavailable), else "". */}}
{{- define "imagineer.pdb.usesMinAvailable" -}}
{{- if not (or (kindIs "invalid" .minAvailable) (eq (toString .minAvailable) "")) }}true{{ end -}}
{{- end -}}
