// Validates the custom resources of rendered manifests (KEDA's
// ScaledObject, the Prometheus operator's ServiceMonitor) against their
// CRDs' OpenAPI schemas, as compiled by @kubernetes-models (npm); built-in
// kinds are kubernetes-validate's. Usage: node crd-check.mjs <manifests.yaml>
// from a directory whose node_modules holds those packages and js-yaml
// (`cargo xtask setup` makes $PADDOCK_HOME/crd-schemas).
import fs from "node:fs";
import yaml from "js-yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
const kinds = { ScaledObject, ServiceMonitor };
let checked = 0;
for (const doc of yaml.loadAll(fs.readFileSync(process.argv[2], "utf8"))) {
  if (!doc || !kinds[doc.kind]) continue;
  new kinds[doc.kind](doc).validate();
  console.log(`passed ${doc.kind}/${doc.metadata.name}`);
  checked++;
}
console.log(`checked ${checked}`);
