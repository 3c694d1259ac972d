{{/* ---------------------------------------------------------------- NetworkPolicies (networkPolicy.*) */}}

{{/*
Peers of a rule from one value block {podSelector, namespaceSelector, cidrs}, as a YAML list:
podSelector alone means pods of the release namespace, namespaceSelector alone every pod of the
matching namespaces, both together those pods in those namespaces; each of `cidrs` is an ipBlock.
An empty block gives no peer: imagineer.validate.networkPolicy (_validate.tpl) refuses it first.
Call with (dict "peer" <the block>).
*/}}
{{- define "imagineer.netpol.peers" -}}
{{- $p := .peer | default dict -}}
{{- $peers := list -}}
{{- if or $p.podSelector $p.namespaceSelector -}}
{{- $peer := dict -}}
{{- with $p.podSelector }}{{ $_ := set $peer "podSelector" (dict "matchLabels" .) }}{{ end -}}
{{- with $p.namespaceSelector }}{{ $_ := set $peer "namespaceSelector" (dict "matchLabels" .) }}{{ end -}}
{{- $peers = append $peers $peer -}}
{{- end -}}
{{- range $p.cidrs -}}
{{- $peers = append $peers (dict "ipBlock" (dict "cidr" .)) -}}
{{- end -}}
{{- toYaml $peers -}}
{{- end -}}

{{/*
The Redis ports the pods connect to, as a YAML list of NetworkPolicy ports: networkPolicy.redis.ports
when set, else the ports of broker.url and broker.resultBackendUrl (6379 when a URL names none; for
sentinel:// each Sentinel's port, 26379 by default, plus 6379 for the master the Sentinels name).
With broker.existingSecret the chart cannot read the URLs: imagineer.validate.networkPolicy requires the ports.
*/}}
{{- define "imagineer.netpol.redisPorts" -}}
{{- $ports := list -}}
{{- if .Values.networkPolicy.redis.ports -}}
{{- $ports = .Values.networkPolicy.redis.ports -}}
{{- else if not .Values.broker.existingSecret -}}
{{- range $url := compact (list .Values.broker.url .Values.broker.resultBackendUrl) -}}
{{- range $part := splitList ";" $url -}}
{{- $scheme := regexReplaceAll "^([a-z]+)://.*$" $part "${1}" -}}
{{- $port := regexReplaceAll "^[a-z]+://([^@/]*@)?(\\[[^\\]]*\\]|[^:/?]*)(:([0-9]+))?([/?].*)?$" $part "${4}" -}}
{{- if eq $scheme "sentinel" -}}
{{- $ports = append $ports (int (default "26379" $port)) -}}
{{- $ports = append $ports 6379 -}}
{{- else -}}
{{- $ports = append $ports (int (default "6379" $port)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $out := list -}}
{{- range $ports | uniq -}}
{{- $out = append $out (dict "port" (int .) "protocol" "TCP") -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The egress every chart pod needs, as a YAML list of rules: Redis and DNS, then `extra` (a list of
raw rules: networkPolicy.extraEgress and, for a worker group, its networkPolicy.extraEgress).
Call with (dict "root" $ "extra" <list>).
*/}}
{{- define "imagineer.netpol.egress" -}}
{{- $np := .root.Values.networkPolicy -}}
- to:
    {{- include "imagineer.netpol.peers" (dict "peer" $np.redis) | nindent 4 }}
  ports:
    {{- include "imagineer.netpol.redisPorts" .root | nindent 4 }}
- to:
    {{- include "imagineer.netpol.peers" (dict "peer" $np.dns) | nindent 4 }}
  ports:
    {{- toYaml $np.dns.ports | nindent 4 }}
{{- with concat ($np.extraEgress | default list) (.extra | default list) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The scraper's egress rule: any address except the private, loopback, link-local, shared and
multicast ranges (networkPolicy.internet.except; each exception sits under the 0.0.0.0/0 or ::/0
block of its family), a second wall behind the SSRF guard, plus every CIDR or address that
config.file.scraping.allow_networks lets the scraper reach on purpose. Host names in that list
cannot be expressed in a NetworkPolicy (imagineer.netpol.allowHosts lists them for NOTES).
*/}}
{{- define "imagineer.netpol.internetRule" -}}
{{- $v4 := list -}}
{{- $v6 := list -}}
{{- range .Values.networkPolicy.internet.except -}}
{{- if contains ":" . }}{{ $v6 = append $v6 . }}{{ else }}{{ $v4 = append $v4 . }}{{ end -}}
{{- end -}}
{{- $peers := list (dict "ipBlock" (dict "cidr" "0.0.0.0/0" "except" $v4)) (dict "ipBlock" (dict "cidr" "::/0" "except" $v6)) -}}
{{- range include "imagineer.netpol.allowCidrs" . | fromYamlArray -}}
{{- $peers = append $peers (dict "ipBlock" (dict "cidr" .)) -}}
{{- end -}}
{{- toYaml (dict "to" $peers) -}}
{{- end -}}

{{/* The IPv4/IPv6 addresses and CIDRs of config.file.scraping.allow_networks, as CIDRs (YAML list). */}}
{{- define "imagineer.netpol.allowCidrs" -}}
{{- $cidrs := list -}}
{{- range (dig "scraping" "allow_networks" list (.Values.config.file | default dict)) -}}
{{- $n := toString . | trim -}}
{{- if regexMatch "^[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?$" $n -}}
{{- $cidrs = append $cidrs (ternary $n (printf "%s/32" $n) (contains "/" $n)) -}}
{{- else if and (contains ":" $n) (regexMatch "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$" $n) -}}
{{- $cidrs = append $cidrs (ternary $n (printf "%s/128" $n) (contains "/" $n)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $cidrs -}}
{{- end -}}

{{/* The host names of config.file.scraping.allow_networks (not addresses), as a YAML list. */}}
{{- define "imagineer.netpol.allowHosts" -}}
{{- $cidrs := include "imagineer.netpol.allowCidrs" . | fromYamlArray -}}
{{- $hosts := list -}}
{{- range (dig "scraping" "allow_networks" list (.Values.config.file | default dict)) -}}
{{- $n := toString . | trim -}}
{{- if not (or (has $n $cidrs) (has (printf "%s/32" $n) $cidrs) (has (printf "%s/128" $n) $cidrs)) -}}
{{- $hosts = append $hosts $n -}}
{{- end -}}
{{- end -}}
{{- toYaml $hosts -}}
{{- end -}}

{{/* Whether a group consumes a queue of networkPolicy.internet.queues ("true" or ""). */}}
{{- define "imagineer.netpol.groupNeedsInternet" -}}
{{- $internet := .root.Values.networkPolicy.internet.queues | default list -}}
{{- range .group.queues -}}
{{- if has . $internet }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/*
One NetworkPolicy for the pods of one component; both directions are always restricted
(policyTypes Ingress and Egress): no `ingress` means no inbound traffic at all.
Call with (dict "root" $ "name" <name suffix> "component" <component label> "ingress" <list> "egress" <list>).
*/}}
{{- define "imagineer.networkPolicy" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "imagineer.fullname" .root }}-{{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "imagineer.labels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "imagineer.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
  policyTypes: [Ingress, Egress]
  {{- if .ingress }}
  ingress:
    {{- toYaml .ingress | nindent 4 }}
  {{- else }}
  # No ingress rule: nothing may connect to these pods (they serve nothing).
  ingress: []
  {{- end }}
  egress:
    {{- toYaml .egress | nindent 4 }}
{{- end -}}
