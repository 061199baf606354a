// Kubernetes API clients of the admission webhook and its certificate manager.
// Kept in this one module so that it can move into the operator's shared client module.

import {
  AdmissionregistrationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
} from '@kubernetes/client-node';

export interface WebhookClients {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
  admission: AdmissionregistrationV1Api;
  customObjects: CustomObjectsApi;
  /** Reads objects of any kind, such as the owners of a Pod. */
  objects: KubernetesObjectApi;
}

/**
 * Builds the clients from a kubeconfig file, or without one from the default chain of
 * client-node (KUBECONFIG, ~/.kube/config, then the in-cluster service account).
 */
export function createWebhookClients(kubeconfigPath?: string): WebhookClients {
  const kubeConfig = new KubeConfig();
  if (kubeconfigPath === undefined) {
    kubeConfig.loadFromDefault();
  } else {
    kubeConfig.loadFromFile(kubeconfigPath);
  }
  return {
    kubeConfig,
    core: kubeConfig.makeApiClient(CoreV1Api),
    admission: kubeConfig.makeApiClient(AdmissionregistrationV1Api),
    customObjects: kubeConfig.makeApiClient(CustomObjectsApi),
    objects: KubernetesObjectApi.makeApiClient(kubeConfig),
  };
}

/** Returns the HTTP status of a failed API call, or undefined for other errors. */
export function apiStatusCode(error: unknown): number | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === 'number' ? code : undefined;
  }
  return undefined;
}

/** Returns the API server's message of a failed call (the Status body), else the error message. */
export function apiErrorMessage(error: unknown): string {
  if (typeof error === 'object' && error !== null && 'body' in error) {
    const body = (error as { body: unknown }).body;
    const parsed = typeof body === 'string' ? safeJsonParse(body) : body;
    if (typeof parsed === 'object' && parsed !== null && typeof (parsed as { message?: unknown }).message === 'string') {
      return (parsed as { message: string }).message;
    }
  }
  return error instanceof Error ? error.message : String(error);
}

function safeJsonParse(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}
