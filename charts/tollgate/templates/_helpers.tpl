{{/* Chart name, at most 63 characters (the DNS label limit). */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every resource name: the release name, followed by the chart name unless the
release name already contains it.
*/}}
{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tollgate.sidecarImage" -}}
{{- $repository := default .Values.image.repository .Values.sidecar.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{/*
A numeric value, such as sidecar.bodyLimit, as decimal text, empty when unset.
A number from a values file arrives as a float64, which quote would print as
8.388608e+06.
*/}}
{{- define "tollgate.decimal" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else if not (kindIs "invalid" .) -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* Name of the MutatingWebhookConfiguration, which the operator patches with its CA bundle. */}}
{{- define "tollgate.webhookConfigurationName" -}}
{{- include "tollgate.fullname" . -}}
{{- end -}}

{{/* Secret with the webhook's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "tollgate.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "tollgate.fullname" .) -}}
{{- end -}}

{{- define "tollgate.certificateName" -}}
{{- printf "%s-webhook" (include "tollgate.fullname" .) -}}
{{- end -}}

{{/* Base URL of the snapshot endpoint that injected sidecars load their configuration from. */}}
{{- define "tollgate.configUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "tollgate.fullname" .) .Release.Namespace (int .Values.service.httpPort) -}}
{{- end -}}

{{/*
A duration such as 1d12h or 500ms, in milliseconds: the sum of its parts. The schema checks
the form of the values passed here.
*/}}
{{- define "tollgate.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d)" (toString .) -1 -}}
{{- $unit := regexFind "(ms|s|m|h|d)$" . -}}
{{- $total = add $total (mul (atoi (trimSuffix $unit .)) (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
ledger.settledRetention, checked as the operator checks it: a duration of at least 1h, so that a
short window fails the install instead of making every operator replica exit at start.
*/}}
{{- define "tollgate.settledRetention" -}}
{{- $text := toString .Values.ledger.settledRetention -}}
{{- if lt (int64 (include "tollgate.durationMs" $text)) 3600000 -}}
{{- fail (printf "ledger.settledRetention %q is shorter than 1h: the ledger keeps settled requests at least an hour, longer than the sidecar's hold TTL (15m) plus its commit retries; use 1h or more, such as 7d (the default)" $text) -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/*
Name of the Secret that the injected sidecars mount their Redis TLS files from:
ledger.tls.sidecarSecret, else ledger.tls.existingSecret, and empty without TLS
files. Fails on the ledger.tls settings that would stop every operator replica
at start.
*/}}
{{- define "tollgate.redisTlsSidecarSecret" -}}
{{- $tls := .Values.ledger.tls -}}
{{- if $tls.existingSecret -}}
{{- if and (not .Values.ledger.existingSecret.name) (not (hasPrefix "rediss" .Values.ledger.redisUrl)) -}}
{{- fail (printf "ledger.tls.existingSecret is set, but ledger.redisUrl %q does not use TLS: use a rediss:// or rediss+cluster:// URL, or leave ledger.tls.existingSecret empty" .Values.ledger.redisUrl) -}}
{{- end -}}
{{- if not (or $tls.caCertificate $tls.clientCertificate) -}}
{{- fail "ledger.tls.existingSecret is set, but ledger.tls.caCertificate and ledger.tls.clientCertificate are both false, so nothing from the Secret is used: set one of them, or leave ledger.tls.existingSecret empty" -}}
{{- end -}}
{{- default $tls.existingSecret $tls.sidecarSecret -}}
{{- else if $tls.clientCertificate -}}
{{- fail "ledger.tls.clientCertificate is true, but ledger.tls.existingSecret is empty: name the Secret in the release namespace that holds ca.crt, tls.crt and tls.key" -}}
{{- else if $tls.sidecarSecret -}}
{{- fail "ledger.tls.sidecarSecret is set, but ledger.tls.existingSecret is empty: the injected sidecars mount the TLS files that the operator uses, so set ledger.tls.existingSecret too, or leave ledger.tls.sidecarSecret empty" -}}
{{- end -}}
{{- end -}}

{{/*
ledger.timeout, checked as the operator checks it: 0 or from 10ms to 10m.
*/}}
{{- define "tollgate.ledgerTimeout" -}}
{{- $text := toString .Values.ledger.timeout -}}
{{- $total := int64 (include "tollgate.durationMs" $text) -}}
{{- if and (ne $total 0) (or (lt $total 10) (gt $total 600000)) -}}
{{- fail (printf "ledger.timeout %q is outside 10ms to 10m: use a duration such as 2s (the default), or 0s for no limit" $text) -}}
{{- end -}}
{{- $text -}}
{{- end -}}
