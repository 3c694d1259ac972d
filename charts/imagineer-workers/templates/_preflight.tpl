{{/*
Pre-flight: the cluster objects the values reference must exist before anything is created, or
`helm install --wait` would only time out (a Pod forbidden for a missing PriorityClass, a claim
Pending on a missing StorageClass, a container that cannot start without its Secret key).

Runs on install and upgrade (and `--dry-run=server`), through Helm's `lookup`. Under `helm
template` and client-side dry runs `lookup` sees no cluster: the checks are skipped, which the
probe below detects (kube-system exists in every cluster). `preflight.enabled=false` turns them
off for tools that render against a cluster without reading it.

Every missing object is collected, then one `fail` lists them all with how to create each.
*/}}
{{- define "imagineer.preflight" -}}
{{- if and .Values.preflight.enabled (lookup "v1" "Namespace" "" "kube-system") -}}
{{- $ns := .Release.Namespace -}}
{{- $missing := list -}}

{{- if not .Values.priorityClasses.create -}}
{{- range $class, $users := include "imagineer.priorityClassUsers" . | fromYaml -}}
{{- if not (lookup "scheduling.k8s.io/v1" "PriorityClass" "" $class) -}}
{{- $missing = append $missing (printf "PriorityClass %s (named by %s): kubectl create priorityclass %s --value=<priority>, or set priorityClasses.create=true" $class (join ", " $users) $class) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- $p := .Values.persistence -}}
{{- if $p.enabled -}}
{{- if $p.existingClaim -}}
{{- if not (lookup "v1" "PersistentVolumeClaim" $ns $p.existingClaim) -}}
{{- $missing = append $missing (printf "PersistentVolumeClaim %s/%s (persistence.existingClaim): create it (ReadWriteMany when groups run on several nodes)" $ns $p.existingClaim) -}}
{{- end -}}
{{- else if not (lookup "v1" "PersistentVolumeClaim" $ns (include "imagineer.claimName" .)) -}}
{{- /* A claim that exists already keeps its class; only a claim still to be created needs one. */ -}}
{{- if $p.storageClass -}}
{{- if not (lookup "storage.k8s.io/v1" "StorageClass" "" $p.storageClass) -}}
{{- $missing = append $missing (printf "StorageClass %s (persistence.storageClass): kubectl get storageclass lists the cluster's classes; the data claim needs one with %s" $p.storageClass (join "," $p.accessModes)) -}}
{{- end -}}
{{- else -}}
{{- $default := false -}}
{{- range (lookup "storage.k8s.io/v1" "StorageClass" "" "").items -}}
{{- if eq (dig "metadata" "annotations" "storageclass.kubernetes.io/is-default-class" "" .) "true" -}}
{{- $default = true -}}
{{- end -}}
{{- end -}}
{{- if not $default -}}
{{- $missing = append $missing "a default StorageClass (persistence.storageClass is empty): set persistence.storageClass, or mark a class default (annotation storageclass.kubernetes.io/is-default-class=true)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- $b := .Values.broker -}}
{{- if $b.existingSecret -}}
{{- $keys := list $b.existingSecretBrokerUrlKey $b.existingSecretResultBackendKey -}}
{{- if include "imagineer.autoscaledGroups" (dict "root" $ "mode" "keda") | fromYamlArray -}}
{{- /* KEDA's TriggerAuthentication reads the address and credentials apart (keda.*Key, _autoscaling.tpl) */ -}}
{{- $keys = concat $keys (include "imagineer.kedaSecretKeys" . | fromYaml | values | sortAlpha) -}}
{{- end -}}
{{- $examples := dict .Values.keda.addressKey "HOST:PORT" (.Values.keda.passwordKey | default "-") "PASSWORD" (.Values.keda.usernameKey | default "-") "USER" -}}
{{- $missing = concat $missing (include "imagineer.preflightSecret" (dict "ns" $ns "name" $b.existingSecret "keys" $keys "path" "broker.existingSecret" "example" "redis://:PASSWORD@HOST:6379/0" "examples" $examples) | fromYamlArray) -}}
{{- end -}}
{{- if $b.caSecret -}}
{{- $missing = concat $missing (include "imagineer.preflightSecret" (dict "ns" $ns "name" $b.caSecret "keys" (list $b.caSecretKey) "path" "broker.caSecret" "file" true) | fromYamlArray) -}}
{{- end -}}
{{- $f := .Values.flower -}}
{{- if and $f.enabled $f.basicAuth.existingSecret -}}
{{- $missing = concat $missing (include "imagineer.preflightSecret" (dict "ns" $ns "name" $f.basicAuth.existingSecret "keys" (list $f.basicAuth.existingSecretKey) "path" "flower.basicAuth.existingSecret" "example" "USER:PASSWORD") | fromYamlArray) -}}
{{- end -}}
{{- range .Values.imagePullSecrets -}}
{{- if not (lookup "v1" "Secret" $ns .name) -}}
{{- $missing = append $missing (printf "Secret %s/%s (imagePullSecrets): kubectl -n %s create secret docker-registry %s --docker-server=... --docker-username=... --docker-password=..." $ns .name $ns .name) -}}
{{- end -}}
{{- end -}}

{{- range $kind := list "ScaledObject" "TriggerAuthentication" -}}
{{- if and (include "imagineer.autoscaledGroups" (dict "root" $ "mode" "keda") | fromYamlArray) (not ($.Capabilities.APIVersions.Has (printf "keda.sh/v1alpha1/%s" $kind))) -}}
{{- $missing = append $missing (printf "the KEDA CRD for %s (workers.<group>.autoscaling.mode keda): install KEDA (its Helm chart kedacore/keda), or use autoscaling.mode hpa" $kind) -}}
{{- end -}}
{{- end -}}

{{- $m := .Values.monitoring -}}
{{- range $kind, $on := dict "ServiceMonitor" $m.serviceMonitor.enabled "PrometheusRule" $m.prometheusRule.enabled -}}
{{- if and $on (not ($.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) -}}
{{- $missing = append $missing (printf "the Prometheus Operator CRD for %s (monitoring.%s.enabled): install the operator's CRDs (kube-prometheus-stack), or turn monitoring.%s.enabled off" $kind (camelcase $kind | untitle) (camelcase $kind | untitle)) -}}
{{- end -}}
{{- end -}}

{{- if $missing -}}
{{- fail (printf "pre-flight: the cluster lacks %d object(s) that these values reference, so nothing was created.\n  - %s\n(the chart README's \"Before installing values-prod.yaml\" lists the prerequisites; preflight.enabled=false skips these checks)" (len $missing) (join "\n  - " $missing)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* What one referenced Secret lacks, as a YAML list of messages.
Call with (dict "ns" "name" "keys" "path" and "example" VALUE or "file" true; "examples" {key: VALUE} overrides "example" per key). */}}
{{- define "imagineer.preflightSecret" -}}
{{- $secret := lookup "v1" "Secret" .ns .name -}}
{{- $absent := list -}}
{{- range .keys -}}
{{- if not (hasKey ($secret.data | default dict) .) -}}
{{- $absent = append $absent . -}}
{{- end -}}
{{- end -}}
{{- $how := list -}}
{{- range $absent -}}
{{- $how = append $how (ternary (printf "--from-file=%s=<file>" .) (printf "--from-literal=%s=%s" . (get ($.examples | default dict) . | default $.example)) (default false $.file)) -}}
{{- end -}}
{{- if not $secret -}}
{{- list (printf "Secret %s/%s (%s): kubectl -n %s create secret generic %s %s" .ns .name .path .ns .name (join " " $how)) | toYaml -}}
{{- else if $absent -}}
{{- list (printf "key %s in Secret %s/%s (%s): add it, e.g. kubectl -n %s patch secret %s --type=merge -p '{\"stringData\": {\"%s\": \"...\"}}'" (join ", " $absent) .ns .name .path .ns .name (first $absent)) | toYaml -}}
{{- else -}}
{{- list | toYaml -}}
{{- end -}}
{{- end -}}

{{/* The PriorityClasses the enabled components name: a YAML map of class -> the values naming it. */}}
{{- define "imagineer.priorityClassUsers" -}}
{{- $users := dict -}}
{{- range $name, $_ := .Values.workers -}}
{{- $g := fromYaml (include "imagineer.group" (dict "root" $ "name" $name)) -}}
{{- if and $g.enabled $g.priorityClassName -}}
{{- $_ := set $users $g.priorityClassName (append (get $users $g.priorityClassName | default list) (printf "workers.%s.priorityClassName" $name)) -}}
{{- end -}}
{{- end -}}
{{- range $component := list "beat" "exporter" "flower" -}}
{{- $v := get $.Values $component -}}
{{- if and $v.enabled $v.priorityClassName -}}
{{- $_ := set $users $v.priorityClassName (append (get $users $v.priorityClassName | default list) (printf "%s.priorityClassName" $component)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $users -}}
{{- end -}}
