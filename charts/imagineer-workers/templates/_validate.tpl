{{/* ---------------------------------------------------------------- every render-time refusal, in one place

What values.schema.json cannot express (values against each other) is checked here, after the
schema. `imagineer.validateValues` is called once, from templates/configmap.yaml (always rendered),
before the pre-flight: it collects every message, then fails once (several: a count, then one per line). Each
message names the value to change. Templates rely on these checks and do not repeat them. The
helm-unittest suite tests/validate_test.yaml has a test per message.
*/}}

{{- define "imagineer.validateValues" -}}
{{- $messages := list -}}
{{- $messages = concat $messages (include "imagineer.validate.celery" . | fromYamlArray) -}}
{{- $messages = concat $messages (include "imagineer.validate.broker" . | fromYamlArray) -}}
{{- range $name := keys .Values.workers | sortAlpha -}}
{{- $g := fromYaml (include "imagineer.group" (dict "root" $ "name" $name)) -}}
{{- if $g.enabled -}}
{{- $messages = concat $messages (include "imagineer.validate.group" (dict "root" $ "name" $name "group" $g) | fromYamlArray) -}}
{{- $messages = concat $messages (include "imagineer.validate.rollout" (dict "root" $ "name" $name "group" $g) | fromYamlArray) -}}
{{- $messages = concat $messages (include "imagineer.validate.autoscaling" (dict "root" $ "name" $name "group" $g) | fromYamlArray) -}}
{{- $messages = concat $messages (include "imagineer.validate.ephemeralStorage" (dict "path" (printf "workers.%s.resources" $name) "resources" $g.resources "min" $.Values.tmpSizeLimit "minName" "tmpSizeLimit") | fromYamlArray) -}}
{{- end -}}
{{- end -}}
{{- $messages = concat $messages (include "imagineer.validate.maintenanceQueue" . | fromYamlArray) -}}
{{- if .Values.beat.enabled -}}
{{- $messages = concat $messages (include "imagineer.validate.ephemeralStorage" (dict "path" "beat.resources" "resources" .Values.beat.resources "min" .Values.tmpSizeLimit "minName" "tmpSizeLimit") | fromYamlArray) -}}
{{- end -}}
{{- if .Values.exporter.enabled -}}
{{- $messages = concat $messages (include "imagineer.validate.ephemeralStorage" (dict "path" "exporter.resources" "resources" .Values.exporter.resources "min" "64Mi" "minName" "its /tmp emptyDir's sizeLimit") | fromYamlArray) -}}
{{- end -}}
{{- $messages = concat $messages (include "imagineer.validate.flower" . | fromYamlArray) -}}
{{- $messages = concat $messages (include "imagineer.validate.pdb" . | fromYamlArray) -}}
{{- $messages = concat $messages (include "imagineer.validate.networkPolicy" . | fromYamlArray) -}}
{{- if .Values.flower.enabled -}}
{{- $messages = concat $messages (include "imagineer.validate.ephemeralStorage" (dict "path" "flower.resources" "resources" .Values.flower.resources "min" .Values.tmpSizeLimit "minName" "tmpSizeLimit") | fromYamlArray) -}}
{{- end -}}
{{- if and .Values.monitoring.serviceMonitor.enabled (not .Values.exporter.enabled) -}}
{{- $messages = append $messages "monitoring.serviceMonitor.enabled needs exporter.enabled: the ServiceMonitor scrapes the exporter's Service" -}}
{{- end -}}
{{- if eq (len $messages) 1 -}}
{{- fail (first $messages) -}}
{{- else if $messages -}}
{{- fail (printf "%d problems with the values, one per line:\n%s" (len $messages) (join "\n" $messages)) -}}
{{- end -}}
{{- end -}}

{{/* Time limits against each other. */}}
{{- define "imagineer.validate.celery" -}}
{{- $m := list -}}
{{- $c := .Values.celery -}}
{{- if ge (int $c.softTimeLimitSeconds) (int $c.hardTimeLimitSeconds) -}}
{{- $m = append $m (printf "celery.softTimeLimitSeconds (%v) must be below celery.hardTimeLimitSeconds (%v)" $c.softTimeLimitSeconds $c.hardTimeLimitSeconds) -}}
{{- end -}}
{{- if le (int $c.visibilityTimeoutSeconds) (int $c.hardTimeLimitSeconds) -}}
{{- $m = append $m (printf "celery.visibilityTimeoutSeconds (%v) must exceed celery.hardTimeLimitSeconds (%v): Redis would redeliver tasks that are still running" $c.visibilityTimeoutSeconds $c.hardTimeLimitSeconds) -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{- define "imagineer.validate.broker" -}}
{{- $m := list -}}
{{- if and (not .Values.broker.existingSecret) (not .Values.broker.url) -}}
{{- $m = append $m "broker.url is required unless broker.existingSecret names a Secret with the broker URL" -}}
{{- else if include "imagineer.autoscaledGroups" (dict "root" $ "mode" "keda") | fromYamlArray -}}
{{- $c := include "imagineer.kedaConnection" . | fromYaml -}}
{{- if $c.passwordEncoded -}}
{{- $m = append $m "broker.url: its user or password is percent-encoded, and KEDA's Redis scaler needs them verbatim (the chart copies them into its Secret for the TriggerAuthentication): put the URL in broker.existingSecret, with the address and password under keda.addressKey and keda.passwordKey" -}}
{{- end -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{- define "imagineer.validate.maintenanceQueue" -}}
{{- $m := list -}}
{{- if and .Values.beat.enabled (not (has .Values.config.maintenanceQueue (include "imagineer.consumedQueues" . | fromYamlArray))) -}}
{{- $m = append $m (printf "config.maintenanceQueue %q is consumed by no enabled worker group: beat's maintenance jobs would stay PENDING" .Values.config.maintenanceQueue) -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{/*
One group's sizing: queues, GPU and concurrency, memory and checkpoints, grace period and hard limit.
Call with (dict "root" $ "name" $name "group" $group).
*/}}
{{- define "imagineer.validate.group" -}}
{{- $m := list -}}
{{- $path := printf "workers.%s" .name -}}
{{- $g := .group -}}
{{- if not $g.queues -}}
{{- $m = append $m (printf "%s.queues is required: the queues the group consumes, e.g. [%s] (or set %s.enabled: false)" $path .name $path) -}}
{{- end -}}
{{- $gpus := int (include "imagineer.groupGpus" $g) -}}
{{- if and (gt $gpus 0) (ne (int $g.concurrency) 1) (not $g.args) -}}
{{- $m = append $m (printf "%s.concurrency must be 1 when %s requests a GPU (got %v): one job per GPU, as the guide requires" $path $path $g.concurrency) -}}
{{- end -}}
{{- if and (gt $gpus 0) $g.args (not (has "--concurrency=1" $g.args)) -}}
{{- $m = append $m (printf "%s.args must contain --concurrency=1 when %s requests a GPU: one job per GPU" $path $path) -}}
{{- end -}}
{{- if gt (float64 $g.checkpointSizeGi) 0.0 -}}
{{- $limit := dig "limits" "memory" "" ($g.resources | default dict) -}}
{{- if not $limit -}}
{{- $m = append $m (printf "%s.resources.limits.memory is required when %s.checkpointSizeGi is set" $path $path) -}}
{{- else -}}
{{- $needed := mulf (float64 $g.checkpointSizeGi) 1.3 (float64 $g.concurrency) -}}
{{- if lt (float64 (include "imagineer.memoryGi" $limit)) $needed -}}
{{- $m = append $m (printf "%s.resources.limits.memory %s is below %s.checkpointSizeGi x 1.3 x concurrency = %.1fGi (one checkpoint per task plus 30%%)" $path $limit $path $needed) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $hard := int .root.Values.celery.hardTimeLimitSeconds -}}
{{- if lt (int (include "imagineer.gracePeriod" .)) $hard -}}
{{- $m = append $m (printf "%s.terminationGracePeriodSeconds (%d) is below celery.hardTimeLimitSeconds (%d): a rollout, scale-in or drain would SIGKILL a task that may still run; leave it null for the hard limit plus celery.shutdownMarginSeconds (%d)" $path (int $g.terminationGracePeriodSeconds) $hard (int (add $hard .root.Values.celery.shutdownMarginSeconds))) -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{/* One group's rollout strategy. Call with (dict "root" $ "name" $name "group" $group). */}}
{{- define "imagineer.validate.rollout" -}}
{{- $m := list -}}
{{- $path := printf "workers.%s.strategy" .name -}}
{{- $s := .group.strategy | default dict -}}
{{- if $s -}}
{{- $type := $s.type | default "RollingUpdate" -}}
{{- if and (eq $type "Recreate") $s.rollingUpdate -}}
{{- $m = append $m (printf "%s.rollingUpdate is only allowed with %s.type RollingUpdate (Recreate stops every pod first)" $path $path) -}}
{{- else if eq $type "RollingUpdate" -}}
{{- /* Kubernetes' defaults for an absent field: 25% each */ -}}
{{- $surge := toString (dig "rollingUpdate" "maxSurge" "25%" $s) -}}
{{- $unavailable := toString (dig "rollingUpdate" "maxUnavailable" "25%" $s) -}}
{{- $zero := list "0" "0%" -}}
{{- if and (has $surge $zero) (has $unavailable $zero) -}}
{{- $m = append $m (printf "%s.rollingUpdate: maxSurge and maxUnavailable cannot both be 0: the rollout could never replace a pod" $path) -}}
{{- else if and (not (has $surge $zero)) (gt (int (include "imagineer.groupGpus" .group)) 0) (not .group.allowGpuSurge) -}}
{{- $m = append $m (printf "%s.rollingUpdate.maxSurge %s adds a pod during a rollout, which needs another GPU (on a pool with one GPU it stays Pending and the rollout stalls): use maxSurge 0 (the default for a GPU group) or set workers.%s.allowGpuSurge: true where the pool has a spare GPU" $path $surge .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{/* One group's autoscaling. Call with (dict "root" $ "name" $name "group" $group). */}}
{{- define "imagineer.validate.autoscaling" -}}
{{- $m := list -}}
{{- $path := printf "workers.%s.autoscaling" .name -}}
{{- $g := .group -}}
{{- if $g.autoscaling.enabled -}}
{{- $a := include "imagineer.autoscaling" . | fromYaml -}}
{{- $grace := int (include "imagineer.gracePeriod" .) -}}
{{- if lt (int $a.maxReplicas) (int $a.minReplicas) -}}
{{- $m = append $m (printf "%s.maxReplicas (%d) is below %s.minReplicas (%d)" $path (int $a.maxReplicas) $path (int $a.minReplicas)) -}}
{{- end -}}
{{- if eq $a.mode "keda" -}}
{{- if lt (int $a.cooldownPeriod) $grace -}}
{{- $m = append $m (printf "%s.cooldownPeriod (%d) is below the group's terminationGracePeriodSeconds (%d): KEDA would remove the last pod sooner after the queue empties than a task may run; leave it null for the grace period" $path (int $a.cooldownPeriod) $grace) -}}
{{- end -}}
{{- if and (eq (int $a.minReplicas) 0) (not $a.unackedTrigger) -}}
{{- $m = append $m (printf "%s.minReplicas 0 needs %s.unackedTrigger (leave it null): with late acks a running task is not in the queue list but in kombu's unacked hash, so the queue triggers alone read 0 while a task runs and KEDA would stop the pod that runs it" $path $path) -}}
{{- end -}}
{{- else -}}
{{- if gt (int (include "imagineer.groupGpus" $g)) 0 -}}
{{- $m = append $m (printf "%s.mode hpa scales on CPU and memory, which show nothing of a GPU group's backlog (one job per GPU): use mode keda (queue lengths), or turn %s.enabled off" $path $path) -}}
{{- end -}}
{{- if eq (int $a.minReplicas) 0 -}}
{{- $m = append $m (printf "%s.minReplicas 0 needs mode keda: a HorizontalPodAutoscaler does not scale to zero, nor back up from it" $path) -}}
{{- end -}}
{{- if not (or $a.targetCPUUtilizationPercentage $a.targetMemoryUtilizationPercentage) -}}
{{- $m = append $m (printf "%s.mode hpa needs %s.targetCPUUtilizationPercentage or %s.targetMemoryUtilizationPercentage" $path $path $path) -}}
{{- end -}}
{{- range $resource, $target := dict "cpu" $a.targetCPUUtilizationPercentage "memory" $a.targetMemoryUtilizationPercentage -}}
{{- if and $target (not (dig "requests" $resource "" ($g.resources | default dict))) -}}
{{- $m = append $m (printf "%s.target%sUtilizationPercentage needs workers.%s.resources.requests.%s: utilization is measured against the request" $path (ternary "CPU" "Memory" (eq $resource "cpu")) $.name $resource) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{/*
The kubelet counts a container's emptyDirs and logs against its ephemeral-storage limit: a limit
below the /tmp emptyDir's sizeLimit would evict the pod before /tmp is full. Call with
(dict "path" "beat.resources" "resources" <map> "min" <quantity> "minName" "tmpSizeLimit").
*/}}
{{- define "imagineer.validate.ephemeralStorage" -}}
{{- $m := list -}}
{{- $limit := dig "limits" "ephemeral-storage" "" (.resources | default dict) -}}
{{- if and $limit (lt (float64 (include "imagineer.memoryGi" $limit)) (float64 (include "imagineer.memoryGi" .min))) -}}
{{- $m = append $m (printf "%s.limits.ephemeral-storage %v is below %s %v: the kubelet counts the /tmp emptyDir against this limit and would evict the pod before /tmp is full" .path $limit .minName .min) -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{- define "imagineer.validate.flower" -}}
{{- $m := list -}}
{{- $auth := .Values.flower.basicAuth -}}
{{- if and .Values.flower.enabled (not $auth.existingSecret) (or (not $auth.username) (not $auth.password)) -}}
{{- $m = append $m "flower.basicAuth.username and flower.basicAuth.password (or flower.basicAuth.existingSecret) are required when flower.enabled is true: Flower can revoke and rate-limit tasks, it never runs without authentication" -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{/*
PodDisruptionBudgets (templates/worker/pdb.yaml): a budget that lets no pod go (minAvailable at
least the group's fewest pods, "100%", or maxUnavailable 0 / "0%") would block every node drain.
Only groups that get a budget are checked (pdb.enabled and more than one pod at the most).
*/}}
{{- define "imagineer.validate.pdb" -}}
{{- $m := list -}}
{{- range $name := keys .Values.workers | sortAlpha -}}
{{- $g := fromYaml (include "imagineer.group" (dict "root" $ "name" $name)) -}}
{{- if and $g.enabled (dig "pdb" "enabled" false $g) (gt (include "imagineer.pdb.maxPods" (dict "group" $g) | int) 1) -}}
{{- $path := printf "workers.%s.pdb" $name -}}
{{- $p := $g.pdb -}}
{{- $minPods := include "imagineer.pdb.minPods" (dict "group" $g) | int -}}
{{- if include "imagineer.pdb.usesMinAvailable" $p -}}
{{- $min := toString $p.minAvailable -}}
{{- if or (eq $min "100%") (and (regexMatch "^[0-9]+$" $min) (ge (int $min) $minPods)) -}}
{{- $m = append $m (printf "%s.minAvailable %s leaves no pod of the group (%d at the fewest) to evict: a node drain would wait forever; use maxUnavailable: 1" $path $min $minPods) -}}
{{- end -}}
{{- else if has (toString $p.maxUnavailable) (list "0" "0%") -}}
{{- $m = append $m (printf "%s.maxUnavailable %v lets no pod go: every node drain would wait forever" $path $p.maxUnavailable) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{/*
NetworkPolicies (templates/networkpolicy/): every peer they need is given, and the Redis ports are
known (the chart reads them from broker.url; a Secret it cannot read).
*/}}
{{- define "imagineer.validate.networkPolicy" -}}
{{- $m := list -}}
{{- $np := .Values.networkPolicy -}}
{{- if $np.enabled -}}
{{- $peers := dict "networkPolicy.redis" (list $np.redis "every pod of the chart talks to Redis") "networkPolicy.dns" (list $np.dns "the pods resolve the Redis host name") -}}
{{- if .Values.exporter.enabled -}}
{{- $_ := set $peers "networkPolicy.exporter.from" (list $np.exporter.from "Prometheus could not scrape the exporter") -}}
{{- end -}}
{{- if and .Values.flower.enabled .Values.flower.ingress.enabled -}}
{{- $_ := set $peers "networkPolicy.flower.from" (list $np.flower.from "the ingress controller could not reach Flower") -}}
{{- end -}}
{{- range $path := keys $peers | sortAlpha -}}
{{- $peer := index (index $peers $path) 0 | default dict -}}
{{- if not (or $peer.podSelector $peer.namespaceSelector $peer.cidrs) -}}
{{- $m = append $m (printf "%s needs a podSelector, a namespaceSelector or cidrs when networkPolicy.enabled is true: %s" $path (index (index $peers $path) 1)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.broker.existingSecret (not $np.redis.ports) -}}
{{- $m = append $m "networkPolicy.redis.ports is required when networkPolicy.enabled and broker.existingSecret are set: the chart cannot read the Redis port from a Secret (e.g. [6380] for rediss://HOST:6380; for sentinel:// the Sentinels' ports and the master's)" -}}
{{- end -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}
