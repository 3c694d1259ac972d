{{/* ---------------------------------------------------------------- rollouts, placement and autoscaling of worker groups

Helpers of templates/worker/{deployment,scaledobject,hpa,triggerauthentication}.yaml and of the
checks in _validate.tpl. The scale-to-zero design is explained in the chart README ("Autoscaling").
*/}}

{{/* GPUs of a group: `gpus`, or nvidia.com/gpu written into resources directly (the guide's snippet). */}}
{{- define "imagineer.groupGpus" -}}
{{- $res := .resources | default dict -}}
{{- max (int .gpus) (int (dig "limits" "nvidia.com/gpu" 0 $res)) (int (dig "requests" "nvidia.com/gpu" 0 $res)) -}}
{{- end -}}

{{/*
The group's terminationGracePeriodSeconds: its own value, or (null) the hard time limit plus
celery.shutdownMarginSeconds, so that SIGTERM (a rollout, a scale-in, a drain) lets a running task
finish. Call with (dict "root" $ "group" $g).
*/}}
{{- define "imagineer.gracePeriod" -}}
{{- if kindIs "invalid" .group.terminationGracePeriodSeconds -}}
{{- add .root.Values.celery.hardTimeLimitSeconds .root.Values.celery.shutdownMarginSeconds -}}
{{- else -}}
{{- int .group.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/*
The Deployment strategy: the group's `strategy` verbatim, else by kind. A GPU group replaces its pods
one at a time without a surge pod (maxSurge 0, maxUnavailable 1): a surge pod would need a second
GPU, and on a pool with one it stays Pending and the rollout stalls. Other groups start the new pod
first (maxSurge 1, maxUnavailable 0); the old one finishes its tasks (warm shutdown).
Call with (dict "group" $g).
*/}}
{{- define "imagineer.strategy" -}}
{{- if .group.strategy -}}
{{- toYaml .group.strategy -}}
{{- else if gt (int (include "imagineer.groupGpus" .group)) 0 -}}
type: RollingUpdate
rollingUpdate:
  maxSurge: 0
  maxUnavailable: 1
{{- else -}}
type: RollingUpdate
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- end -}}
{{- end -}}

{{/*
The cluster autoscaler's safe-to-evict annotation value: the group's `safeToEvict` ("true"/"false"),
or (null) "false" for a GPU group and nothing for the others. The cluster autoscaler gives an
evicted pod at most --max-graceful-termination-sec (600 s by default), less than a training task.
*/}}
{{- define "imagineer.safeToEvict" -}}
{{- if not (kindIs "invalid" .group.safeToEvict) -}}
{{- ternary "true" "false" .group.safeToEvict -}}
{{- else if gt (int (include "imagineer.groupGpus" .group)) 0 -}}
false
{{- end -}}
{{- end -}}

{{/*
A group's autoscaling values with the derived ones filled in, as YAML:
  cooldownPeriod  null -> the group's grace period (KEDA waits at least as long as a task may run
                  before it removes the last pod)
  listLength      null -> the group's concurrency (waiting messages per pod)
  unackedTrigger  null -> on exactly when minReplicas is 0 (the scale-to-zero safeguard)
Call with (dict "root" $ "group" $g).
*/}}
{{- define "imagineer.autoscaling" -}}
{{- $a := deepCopy (.group.autoscaling | default dict) -}}
{{- if kindIs "invalid" $a.cooldownPeriod -}}
{{- $_ := set $a "cooldownPeriod" (int (include "imagineer.gracePeriod" .)) -}}
{{- end -}}
{{- if kindIs "invalid" $a.listLength -}}
{{- $_ := set $a "listLength" (int .group.concurrency) -}}
{{- end -}}
{{- if kindIs "invalid" $a.unackedTrigger -}}
{{- $_ := set $a "unackedTrigger" (eq (int $a.minReplicas) 0) -}}
{{- end -}}
{{- toYaml $a -}}
{{- end -}}

{{/* Enabled groups whose autoscaling is on in the given mode: a YAML list of names. Call with (dict "root" $ "mode" "keda"). */}}
{{- define "imagineer.autoscaledGroups" -}}
{{- $names := list -}}
{{- range $name := keys .root.Values.workers | sortAlpha -}}
{{- $g := fromYaml (include "imagineer.group" (dict "root" $.root "name" $name)) -}}
{{- if and $g.enabled $g.autoscaling.enabled (eq $g.autoscaling.mode $.mode) -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- toYaml $names -}}
{{- end -}}

{{/*
Queues whose every consuming enabled group may run no pod at all (replicas 0, or autoscaling with
minReplicas 0): nothing answers on them while the group is idle, which is not a fault. A YAML list.
*/}}
{{- define "imagineer.scaleToZeroQueues" -}}
{{- $always := list -}}
{{- $maybe := list -}}
{{- range $name := keys .Values.workers | sortAlpha -}}
{{- $g := fromYaml (include "imagineer.group" (dict "root" $ "name" $name)) -}}
{{- if $g.enabled -}}
{{- $min := ternary (int $g.autoscaling.minReplicas) (int $g.replicas) (and $g.autoscaling.enabled true) -}}
{{- if eq $min 0 -}}
{{- $maybe = concat $maybe ($g.queues | default list) -}}
{{- else -}}
{{- $always = concat $always ($g.queues | default list) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $queues := list -}}
{{- range $maybe | uniq | sortAlpha -}}
{{- if not (has . $always) -}}
{{- $queues = append $queues . -}}
{{- end -}}
{{- end -}}
{{- toYaml $queues -}}
{{- end -}}

{{/* ---------------------------------------------------------------- KEDA: where the scaler reads Redis */}}

{{- define "imagineer.kedaAuthName" -}}
{{- printf "%s-redis" (include "imagineer.fullname" .) -}}
{{- end -}}

{{/*
How KEDA's Redis scaler reaches the broker, as YAML:
  type            redis, or redis-sentinel when broker.sentinelMaster is set
  databaseIndex   keda.databaseIndex, else the broker URL's (chart's Secret), else 0
  enableTLS       keda.enableTLS, else rediss:// (chart's Secret) or broker.caSecret set
  address, username, password, passwordEncoded
                  parsed from broker.url when the chart owns the Secret (it writes them there);
                  with broker.existingSecret they are that Secret's keys keda.*Key
*/}}
{{- define "imagineer.kedaConnection" -}}
{{- $b := .Values.broker -}}
{{- $k := .Values.keda -}}
{{- $c := dict "type" (ternary "redis-sentinel" "redis" (ne ($b.sentinelMaster | default "") "")) "databaseIndex" 0 "enableTLS" (ne ($b.caSecret | default "") "") "address" "" "username" "" "password" "" "passwordEncoded" false -}}
{{- if and (not $b.existingSecret) $b.url -}}
{{- $addresses := list -}}
{{- $db := "" -}}
{{- $tls := false -}}
{{- range splitList ";" $b.url -}}
{{- if trim . -}}
{{- $u := urlParse (trim .) -}}
{{- $defaultPort := ternary "26379" "6379" (eq $u.scheme "sentinel") -}}
{{- $addresses = append $addresses (ternary $u.host (printf "%s:%s" $u.host $defaultPort) (regexMatch ":[0-9]+$" $u.host)) -}}
{{- if eq $u.scheme "rediss" -}}{{- $tls = true -}}{{- end -}}
{{- if and (not $db) (trimPrefix "/" $u.path) -}}{{- $db = trimPrefix "/" $u.path -}}{{- end -}}
{{- with $u.userinfo -}}
{{- if contains ":" . -}}
{{- $parts := splitn ":" 2 . -}}
{{- $_ := set $c "username" $parts._0 -}}
{{- $_ := set $c "password" $parts._1 -}}
{{- else -}}
{{- $_ := set $c "username" . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "address" (join "," $addresses) -}}
{{- $_ := set $c "databaseIndex" (int ($db | default "0")) -}}
{{- $_ := set $c "enableTLS" (or $tls (get $c "enableTLS")) -}}
{{- $_ := set $c "passwordEncoded" (or (contains "%" (get $c "password")) (contains "%" (get $c "username"))) -}}
{{- end -}}
{{- if not (kindIs "invalid" $k.databaseIndex) -}}
{{- $_ := set $c "databaseIndex" (int $k.databaseIndex) -}}
{{- end -}}
{{- if not (kindIs "invalid" $k.enableTLS) -}}
{{- $_ := set $c "enableTLS" $k.enableTLS -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/*
The Secret keys the TriggerAuthentication reads, as YAML {parameter: key}: address always;
password and username when the chart's Secret has them (from broker.url) or, with
broker.existingSecret, when keda.passwordKey / keda.usernameKey name them.
*/}}
{{- define "imagineer.kedaSecretKeys" -}}
{{- $k := .Values.keda -}}
{{- $keys := dict "address" $k.addressKey -}}
{{- if .Values.broker.existingSecret -}}
{{- with $k.passwordKey -}}{{- $_ := set $keys "password" . -}}{{- end -}}
{{- with $k.usernameKey -}}{{- $_ := set $keys "username" . -}}{{- end -}}
{{- else -}}
{{- $c := include "imagineer.kedaConnection" . | fromYaml -}}
{{- if $c.password -}}{{- $_ := set $keys "password" ($k.passwordKey | default "redis-password") -}}{{- end -}}
{{- if $c.username -}}{{- $_ := set $keys "username" ($k.usernameKey | default "redis-username") -}}{{- end -}}
{{- end -}}
{{- toYaml $keys -}}
{{- end -}}

{{/* Connection metadata every Redis trigger carries. Call with (dict "root" $ "conn" <kedaConnection>). */}}
{{- define "imagineer.kedaTriggerMetadata" -}}
databaseIndex: {{ .conn.databaseIndex | quote }}
enableTLS: {{ .conn.enableTLS | quote }}
{{- if eq .conn.type "redis-sentinel" }}
sentinelMaster: {{ .root.Values.broker.sentinelMaster | quote }}
{{- end }}
{{- end -}}

{{/* HPA behavior (KEDA's and the plain HPA's): scale-in removes at most one pod per period. Call with the autoscaling values. */}}
{{- define "imagineer.scaleDownBehavior" -}}
scaleDown:
  stabilizationWindowSeconds: {{ .scaleDown.stabilizationWindowSeconds }}
  policies:
    - type: Pods
      value: 1
      periodSeconds: {{ .scaleDown.periodSeconds }}
{{- end -}}
