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
