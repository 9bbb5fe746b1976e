{{/* Chart name, truncated to 63 characters. */}}
{{- define "tender.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name; leaves room for the "-metrics" / "-config" suffixes. */}}
{{- define "tender.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tender.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tender.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tender.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tender.labels" -}}
helm.sh/chart: {{ include "tender.chart" . }}
{{ include "tender.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tender.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tender.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tender.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Where the chart mounts things inside the containers. */}}
{{- define "tender.configDir" -}}/etc/tender{{- end -}}
{{- define "tender.configPath" -}}/etc/tender/config.toml{{- end -}}
{{- define "tender.cacheDir" -}}/var/lib/tender{{- end -}}
{{- define "tender.secretsDir" -}}/etc/tender-secrets{{- end -}}
{{- define "tender.caDir" -}}/etc/tender-ca{{- end -}}
{{/* TLS Secrets (kubernetes.io/tls): <tlsDir>/api for listen, <tlsDir>/metrics for metrics_listen. */}}
{{- define "tender.peerTokenDir" -}}/etc/tender-peer{{- end -}}
{{/* The Secret holding the cluster token. */}}
{{- define "tender.peerTokenSecret" -}}
{{- .Values.cluster.token.existingSecret | default (printf "%s-peer-token" (include "tender.fullname" .)) -}}
{{- end -}}
{{- define "tender.tlsDir" -}}/etc/tender-tls{{- end -}}
{{/* Whether metrics_listen is served with TLS ("true" or empty). */}}
{{- define "tender.metricsTLS" -}}
{{- if and .Values.metrics.address .Values.metrics.tls.secretName -}}true{{- end -}}
{{- end -}}
{{- define "tender.hostsMount" -}}
{{- printf "/host/%s" (.Values.containerdHosts.hostsDir | trimPrefix "/") -}}
{{- end -}}

{{/* The mirror URL written into hosts.toml (https when the listen port has TLS). */}}
{{- define "tender.mirrorURL" -}}
{{- printf "%s://127.0.0.1:%v" (ternary "https" "http" (not (empty .Values.tls.secretName))) .Values.listen.port -}}
{{- end -}}

{{/* Distinct names of the credential Secrets used by upstreams, as a JSON list. */}}
{{- define "tender.credentialSecrets" -}}
{{- $names := list -}}
{{- range .Values.registries -}}
{{- range .upstreams -}}
{{- with .credentialsSecret -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end -}}

{{/* Distinct names of the CA ConfigMaps used by upstreams, as a JSON list. */}}
{{- define "tender.caConfigMaps" -}}
{{- $names := list -}}
{{- range .Values.registries -}}
{{- range .upstreams -}}
{{- with .caConfigMap -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end -}}

{{/* cache.maxSize ("20GiB") in bytes, for alert expressions. */}}
{{- define "tender.cacheMaxBytes" -}}
{{- $s := .Values.cache.maxSize | toString -}}
{{- if hasSuffix "TiB" $s -}}
{{- mul (trimSuffix "TiB" $s | int64) 1099511627776 -}}
{{- else if hasSuffix "GiB" $s -}}
{{- mul (trimSuffix "GiB" $s | int64) 1073741824 -}}
{{- else if hasSuffix "MiB" $s -}}
{{- mul (trimSuffix "MiB" $s | int64) 1048576 -}}
{{- else -}}
{{- fail (printf "cache.maxSize %q: use an integer followed by MiB, GiB or TiB" $s) -}}
{{- end -}}
{{- end -}}

{{/* tender's config.toml, from values. */}}
{{- define "tender.config" -}}
# Rendered by the tender Helm chart from its values (unknown keys are errors in tender).
listen = {{ printf "127.0.0.1:%v" .Values.listen.port | toJson }}
{{- if .Values.metrics.address }}
metrics_listen = {{ printf "%s:%v" .Values.metrics.address .Values.metrics.port | toJson }}
{{- end }}
cache_dir = {{ include "tender.cacheDir" . | toJson }}
cache_max_size = {{ .Values.cache.maxSize | toString | toJson }}
min_free_space = {{ .Values.cache.minFreeSpace | toString | toJson }}
tag_ttl = {{ .Values.tagTTL | toString | toJson }}
connect_timeout = {{ .Values.timeouts.connect | toString | toJson }}
header_timeout = {{ .Values.timeouts.header | toString | toJson }}
stall_timeout = {{ .Values.timeouts.stall | toString | toJson }}
progress_timeout = {{ .Values.timeouts.progress | toString | toJson }}
breaker_failures = {{ .Values.breaker.failures | int64 }}
breaker_cooldown = {{ .Values.breaker.cooldown | toString | toJson }}
scrub_interval = {{ .Values.scrub.interval | toString | toJson }}
scrub_rate = {{ .Values.scrub.rate | toString | toJson }}
max_connections = {{ .Values.limits.maxConnections | int64 }}
max_connections_per_client = {{ .Values.limits.maxConnectionsPerClient | int64 }}
{{- $tlsDir := include "tender.tlsDir" . }}
{{- if .Values.tls.secretName }}
{{- if or .Values.prefetch.images .Values.prefetch.pinned }}
{{- fail "prefetch.images and prefetch.pinned cannot be used with tls.secretName: tender's scheduled prefetch pulls from its own listen port over plain HTTP" }}
{{- end }}
tls_cert_file = {{ printf "%s/api/tls.crt" $tlsDir | toJson }}
tls_key_file = {{ printf "%s/api/tls.key" $tlsDir | toJson }}
{{- end }}
{{- if include "tender.metricsTLS" . }}
metrics_tls_cert_file = {{ printf "%s/metrics/tls.crt" $tlsDir | toJson }}
metrics_tls_key_file = {{ printf "%s/metrics/tls.key" $tlsDir | toJson }}
{{- end }}
{{- $secretsDir := include "tender.secretsDir" . }}
{{- $caDir := include "tender.caDir" . }}
{{- $defaults := 0 }}
{{- range .Values.registries }}
{{- if .default }}{{ $defaults = add1 $defaults }}{{ end }}

[[registry]]
host = {{ .host | toJson }}
{{- if .default }}
default = true
{{- end }}
{{- if .verifyClientCredentials }}
verify_client_credentials = true
{{- end }}
{{- if not .upstreams }}
{{- fail (printf "registries: %s needs at least one upstream" .host) }}
{{- end }}
{{- range .upstreams }}
  [[registry.upstream]]
  url = {{ .url | toJson }}
  {{- with .repositoryPrefix }}
  repository_prefix = {{ . | toJson }}
  {{- end }}
  {{- with .proxy }}
  proxy = {{ . | toJson }}
  {{- end }}
  {{- with .credentialsSecret }}
  credentials_file = {{ printf "%s/%s/%s" $secretsDir .name .key | toJson }}
  {{- end }}
  {{- if and .caFile .caConfigMap }}
  {{- fail (printf "registries: upstream %s sets both caFile and caConfigMap" .url) }}
  {{- end }}
  {{- with .caConfigMap }}
  ca_file = {{ printf "%s/%s/%s" $caDir .name .key | toJson }}
  {{- end }}
  {{- with .caFile }}
  ca_file = {{ . | toJson }}
  {{- end }}
  {{- if hasKey . "forwardClientCredentials" }}
  forward_client_credentials = {{ .forwardClientCredentials }}
  {{- end }}
{{- end }}
{{- end }}
{{- if gt $defaults 1 }}
{{- fail "registries: at most one registry may have default: true" }}
{{- end }}
{{- if .Values.cluster.enabled }}

[cluster]
# NODE_IP comes from the downward API (status.hostIP): one config for every node.
listen = {{ printf "${NODE_IP}:%v" .Values.cluster.port | toJson }}
advertise = {{ printf "http://${NODE_IP}:%v" .Values.cluster.port | toJson }}
peers_dns = {{ printf "%s-peers.%s.svc.%s:%v" (include "tender.fullname" .) .Release.Namespace .Values.cluster.clusterDomain .Values.cluster.port | toJson }}
token_file = {{ printf "%s/%s" (include "tender.peerTokenDir" .) .Values.cluster.token.key | toJson }}
peer_timeout = {{ .Values.cluster.peerTimeout | toString | toJson }}
dns_interval = {{ .Values.cluster.dnsInterval | toString | toJson }}
{{- end }}
{{- if or .Values.prefetch.images .Values.prefetch.pinned }}

[prefetch]
images = {{ .Values.prefetch.images | default list | toJson }}
pinned = {{ .Values.prefetch.pinned | default list | toJson }}
{{- with .Values.prefetch.pinnedMaxSize }}
pinned_max_size = {{ . | toString | toJson }}
{{- end }}
interval = {{ .Values.prefetch.interval | toString | toJson }}
{{- end }}
{{- end -}}
