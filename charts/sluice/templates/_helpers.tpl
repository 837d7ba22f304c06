{{/* The chart name, or nameOverride. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name, plus the chart name unless the
release name already contains it. Kept to 50 characters so that suffixes such as "-leader-election" fit.
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label. */}}
{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource, without its component. */}}
{{- define "sluice.commonLabels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the operator's resources. */}}
{{- define "sluice.labels" -}}
{{ include "sluice.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator pods (never change them: Deployment selectors are immutable). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image. */}}
{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The leader-election Lease. */}}
{{- define "sluice.leaseName" -}}
{{- default (include "sluice.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The broker Service (workers' default broker URL points at it). */}}
{{- define "sluice.brokerServiceName" -}}
{{- printf "%s-broker" (include "sluice.fullname" .) }}
{{- end }}

{{/* The metrics Service (every replica, ready or not). */}}
{{- define "sluice.metricsServiceName" -}}
{{- printf "%s-metrics" (include "sluice.fullname" .) }}
{{- end }}

{{/* The URL worker pods reach the broker at. */}}
{{- define "sluice.brokerUrl" -}}
{{- if .Values.brokerUrl }}
{{- .Values.brokerUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "sluice.brokerServiceName" .) .Release.Namespace (int .Values.broker.port) }}
{{- end }}
{{- end }}

{{/*
What the operator does in each watched namespace: the rules of its ClusterRole (cluster-wide mode) or of its
Role in each watched namespace.
*/}}
{{- define "sluice.rules" -}}
# FlowRuns: the operator drives them, creates the child FlowRuns of `flow` steps and deletes finished runs
# whose ttlSecondsAfterFinished has passed.
- apiGroups: ["sluice.dev"]
  resources: ["flowruns"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["sluice.dev"]
  resources: ["flowruns/status"]
  verbs: ["get", "patch", "update"]
# WorkerPools: read the spec, write the status; the scale subresource serves the HPA-facing selector.
- apiGroups: ["sluice.dev"]
  resources: ["workerpools"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["sluice.dev"]
  resources: ["workerpools/status", "workerpools/scale"]
  verbs: ["get", "patch"]
# CronFlows: read the spec, write the status; the FlowRuns they start are created (and, past the history
# limits, deleted) under the FlowRun rules above.
- apiGroups: ["sluice.dev"]
  resources: ["cronflows"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["sluice.dev"]
  resources: ["cronflows/status"]
  verbs: ["get", "patch"]
# FlowTemplates: read when a run of one starts (the run copies the template's flow into its own spec).
- apiGroups: ["sluice.dev"]
  resources: ["flowtemplates"]
  verbs: ["get"]
# Owner references with blockOwnerDeletion (child FlowRuns, a CronFlow's runs, pool Deployments) need this
# where the OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: ["sluice.dev"]
  resources: ["flowruns/finalizers", "workerpools/finalizers", "cronflows/finalizers"]
  verbs: ["update"]
# One Deployment per WorkerPool, written with server-side apply.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Worker pods: the broker reads a caller's pod (its pool label); the reaper deletes failed or silent workers
# and marks idle ones cheaper to delete before a scale-down (controller.kubernetes.io/pod-deletion-cost).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete", "patch"]
# Events on FlowRuns, WorkerPools and CronFlows.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The Service in front of the external metrics API (the name its certificate carries). */}}
{{- define "sluice.externalMetricsServiceName" -}}
{{- printf "%s-external-metrics" (include "sluice.fullname" .) }}
{{- end }}

{{/*
Where the admission policies apply (their bindings' matchResources): the watched namespaces, or every
namespace when watchNamespaces is empty.
*/}}
{{- define "sluice.admissionPolicyNamespaces" -}}
{{- if .Values.watchNamespaces }}
matchResources:
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values: {{ toJson .Values.watchNamespaces }}
{{- end }}
{{- end }}

{{/*
A CEL list comprehension over slices: (list LIST VAR BODY CHUNK) renders an expression that maps every element
VAR of LIST to the list BODY and concatenates the results, taking LIST in slices of CHUNK elements. One
comprehension over a long list costs the API server quadratic time and CEL cost (its result grows by
concatenation); over slices both stay linear.
*/}}
{{- define "sluice.celChunks" -}}
{{- $l := index . 0 }}{{- $v := index . 1 }}{{- $body := index . 2 }}{{- $n := index . 3 }}
{{- $c := printf "%s_" (regexReplaceAll "[^a-z]" $v "") }}
{{- printf "lists.range((size(%s) + %d) / %d).map(%s, %s.slice(%s * %d, [size(%s), %s * %d + %d].min()).map(%s, %s).flatten()).flatten()" $l (sub $n 1) $n $c $l $c $n $l $c $n $n $v $body }}
{{- end }}

{{/* Like sluice.celChunks, for (list LIST VAR PREDICATE CHUNK): the elements of LIST for which PREDICATE holds. */}}
{{- define "sluice.celChunksFilter" -}}
{{- $l := index . 0 }}{{- $v := index . 1 }}{{- $pred := index . 2 }}{{- $n := index . 3 }}
{{- $c := printf "%s_" (regexReplaceAll "[^a-z]" $v "") }}
{{- printf "lists.range((size(%s) + %d) / %d).map(%s, %s.slice(%s * %d, [size(%s), %s * %d + %d].min()).filter(%s, %s)).flatten()" $l (sub $n 1) $n $c $l $c $n $l $c $n $n $v $pred }}
{{- end }}
