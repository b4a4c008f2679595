{{/*
Names and labels, the conventional way: <release>-<chart> unless the release name already
contains the chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "gpu-queue.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpu-queue.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gpu-queue.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpu-queue.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpu-queue.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpu-queue.labels" -}}
helm.sh/chart: {{ include "gpu-queue.chart" . }}
{{ include "gpu-queue.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpu-queue
{{- end }}

{{/* The webhook Deployment's pods (the Redis pods have component=redis). */}}
{{- define "gpu-queue.webhookSelectorLabels" -}}
{{ include "gpu-queue.selectorLabels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "gpu-queue.redisSelectorLabels" -}}
{{ include "gpu-queue.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "gpu-queue.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpu-queue.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gpu-queue.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The hub namespace(s) as a JSON list. Fails the render when the list is empty or names the
release's own namespace or kube-system: with failurePolicy Fail, a webhook that intercepts its own
namespace can block its own recovery, and kube-system must never depend on it.
*/}}
{{- define "gpu-queue.hubNamespaces" -}}
{{- $namespaces := .Values.hubNamespaces | default list }}
{{- if not $namespaces }}
{{- fail "hubNamespaces: name the namespace(s) of your JupyterHub (e.g. [jhub])" }}
{{- end }}
{{- range $namespaces }}
{{- if eq . $.Release.Namespace }}
{{- fail (printf "hubNamespaces: %q is this release's own namespace; install gpu-queue in a namespace of its own (e.g. gpu-queue)" .) }}
{{- end }}
{{- if eq . "kube-system" }}
{{- fail "hubNamespaces: kube-system must never be intercepted by this webhook" }}
{{- end }}
{{- end }}
{{- toJson $namespaces }}
{{- end }}

{{/* Cluster-scoped name of both webhook configurations (`gpu-queue certs --patch-webhooks` patches both). */}}
{{- define "gpu-queue.webhookConfigName" -}}
{{- include "gpu-queue.fullname" . }}
{{- end }}

{{- define "gpu-queue.tlsSecretName" -}}
{{- printf "%s-tls" (include "gpu-queue.fullname" .) }}
{{- end }}

{{- define "gpu-queue.apiSecretName" -}}
{{- default (printf "%s-api" (include "gpu-queue.fullname" .)) .Values.api.existingSecret }}
{{- end }}

{{- define "gpu-queue.leaseName" -}}
{{- printf "%s-leader" (include "gpu-queue.fullname" .) }}
{{- end }}

{{- define "gpu-queue.redisName" -}}
{{- printf "%s-redis" (include "gpu-queue.fullname" .) }}
{{- end }}

{{/* Where the Redis password comes from: "name key", or empty when there is none. */}}
{{- define "gpu-queue.redisPasswordRef" -}}
{{- if eq .Values.redis.mode "builtin" }}
{{- if .Values.redis.builtin.auth.enabled }}
{{- printf "%s %s" (default (include "gpu-queue.redisName" .) .Values.redis.builtin.auth.existingSecret) .Values.redis.builtin.auth.passwordKey }}
{{- end }}
{{- else if .Values.redis.external.passwordSecret.name }}
{{- printf "%s %s" .Values.redis.external.passwordSecret.name .Values.redis.external.passwordSecret.key }}
{{- end }}
{{- end }}

{{/*
The Redis URL without a password (it is written into the ConfigMap). The password is added at
run time through the GPU_QUEUE_REDIS__URL environment variable.
*/}}
{{- define "gpu-queue.redisUrl" -}}
{{- if eq .Values.redis.mode "builtin" }}
{{- printf "redis://%s.%s.svc:6379/0" (include "gpu-queue.redisName" .) .Release.Namespace }}
{{- else if eq .Values.redis.mode "external" }}
{{- $url := required "redis.external.url is required when redis.mode is external (redis://HOST:PORT/DB or rediss://...)" .Values.redis.external.url }}
{{- if not (regexMatch "^rediss?://" $url) }}
{{- fail (printf "redis.external.url: %q must start with redis:// or rediss://" $url) }}
{{- end }}
{{- if regexMatch "^rediss?://[^/]*@" $url }}
{{- fail "redis.external.url: do not put credentials in the URL (it is stored in a ConfigMap); use redis.external.passwordSecret" }}
{{- end }}
{{- if .Values.redis.external.tls.caSecret }}
{{- $sep := ternary "&" "?" (contains "?" $url) }}
{{- printf "%s%sssl_ca_certs=/etc/gpu-queue/redis-ca/%s" $url $sep .Values.redis.external.tls.caKey }}
{{- else }}
{{- $url }}
{{- end }}
{{- else }}
{{- fail (printf "redis.mode: %q is not one of builtin, external" .Values.redis.mode) }}
{{- end }}
{{- end }}

{{/* The Redis URL with the password as a $(REDIS_PASSWORD) reference, expanded by the kubelet. */}}
{{- define "gpu-queue.redisUrlWithPassword" -}}
{{- $url := include "gpu-queue.redisUrl" . }}
{{- $user := "" }}
{{- if eq .Values.redis.mode "external" }}{{ $user = .Values.redis.external.username }}{{ end }}
{{- regexReplaceAll "^(rediss?://)" $url (printf "${1}%s:$$(REDIS_PASSWORD)@" $user) }}
{{- end }}

{{/* The user name Kubernetes gives the service's ServiceAccount (the only one that may ungate). */}}
{{- define "gpu-queue.serviceUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "gpu-queue.serviceAccountName" .) }}
{{- end }}

{{/*
The service's configuration file. Profiles, pools and tuning come from .Values.config; what the
chart itself decides (namespaces, service account, Redis, TLS paths, ports, the Lease) is set
here and wins, so the file always matches the objects this chart renders.
*/}}
{{- define "gpu-queue.config" -}}
{{- $owned := dict
  "namespaces" (include "gpu-queue.hubNamespaces" . | fromJsonArray)
  "serviceAccount" (include "gpu-queue.serviceUser" .)
  "redis" (dict "url" (include "gpu-queue.redisUrl" .))
  "tls" (dict "certFile" "/etc/gpu-queue/tls/tls.crt" "keyFile" "/etc/gpu-queue/tls/tls.key")
  "server" (dict "host" "0.0.0.0" "port" 8443 "metricsPort" 8080)
  "controller" (dict "leaseName" (include "gpu-queue.leaseName" .) "leaseNamespace" .Release.Namespace)
  "logLevel" .Values.logLevel
}}
{{- $config := mustMergeOverwrite (deepCopy .Values.config) $owned }}
{{- toYaml $config }}
{{- end }}

{{/* A generated secret value that survives upgrades: the live Secret's value, else a new one. */}}
{{- define "gpu-queue.keptRandom" -}}
{{- $secret := lookup "v1" "Secret" .namespace .name }}
{{- if and $secret $secret.data (hasKey $secret.data .key) }}
{{- index $secret.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}

{{/* The webhooks' namespaceSelector: the hub namespaces, and never ours or kube-system. */}}
{{- define "gpu-queue.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: In
    values:
      {{- range (include "gpu-queue.hubNamespaces" . | fromJsonArray) }}
      - {{ . | quote }}
      {{- end }}
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      - {{ .Release.Namespace | quote }}
      - "kube-system"
{{- end }}

{{/* The pod and container security contexts shared by the service and the certificate Jobs. */}}
{{- define "gpu-queue.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "gpu-queue.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/*
"true" when the webhooks call webhook.url with the CA in webhook.caBundle: the caBundle is then
rendered from the values, and neither cainjector nor the certificate Jobs touch it. Fails the
render for a caBundle without a URL (with the Service, certs.mode sets the caBundle).
*/}}
{{- define "gpu-queue.caBundleFromValues" -}}
{{- if and .Values.webhook.caBundle (not .Values.webhook.url) }}
{{- fail "webhook.caBundle is only used with webhook.url; with the release's Service, certs.mode sets the caBundle" }}
{{- end }}
{{- if and .Values.webhook.url .Values.webhook.caBundle }}true{{ end }}
{{- end }}

{{/*
A webhook's clientConfig, called as (dict "root" $ "path" "/mutate"): the release's Service, or
webhook.url + path when webhook.url is set (a service not behind this release's Service).
*/}}
{{- define "gpu-queue.clientConfig" -}}
{{- $root := .root }}
{{- with $root.Values.webhook.url }}
url: {{ printf "%s%s" (trimSuffix "/" .) $.path | quote }}
{{- if include "gpu-queue.caBundleFromValues" $root }}
caBundle: {{ $root.Values.webhook.caBundle | nospace | quote }}
{{- end }}
{{- else }}
{{- $_ := include "gpu-queue.caBundleFromValues" $root }}
service:
  name: {{ include "gpu-queue.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ .path }}
  port: {{ $root.Values.service.port }}
{{- end }}
{{- end }}

{{/* Annotations of both webhook configurations: where their caBundle comes from. */}}
{{- define "gpu-queue.webhookAnnotations" -}}
annotations:
{{- if include "gpu-queue.caBundleFromValues" . }}
  # caBundle is rendered from webhook.caBundle: nothing injects or patches it.
  gpu-queue.io/ca-bundle-from: values
{{- else if eq .Values.certs.mode "certManager" }}
  # cert-manager's cainjector keeps caBundle equal to the serving certificate's CA.
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "gpu-queue.tlsSecretName" .) }}
{{- else }}
  # caBundle is set by the certificate hook Jobs (`gpu-queue certs --patch-webhooks`), not by
  # this template: a rendered value would overwrite a renewed CA on every upgrade.
  gpu-queue.io/ca-bundle-from: {{ printf "%s/%s" .Release.Namespace (include "gpu-queue.tlsSecretName" .) }}
{{- end }}
{{- end }}
