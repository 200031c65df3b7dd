// Validates Kubernetes objects against the OpenAPI JSON schemas compiled into the npm packages
// kubernetes-models (the Kubernetes API) and @kubernetes-models/prometheus-operator (PodMonitor,
// ServiceMonitor): types, required fields, enums, formats, int-or-string. Offline: the schemas
// are the packages' own. (They allow unknown fields, as the OpenAPI does; the Python side of
// tests/integration/test_docker_files.py rejects those.)
//
//   node validate.mjs OBJECTS.json NODE_MODULES
//
// OBJECTS.json is a JSON array of objects; NODE_MODULES the directory where package.json's
// dependencies are installed (ES modules ignore NODE_PATH: each model is imported by its file).
//
// Prints one line per object ("ok Kind/name" or "INVALID Kind/name: errors") and exits 1 if
// any object is invalid or has no schema here.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const modules = process.argv[3];

function modelFile(apiVersion, kind) {
  const pkg = apiVersion.startsWith("monitoring.coreos.com/")
    ? "@kubernetes-models/prometheus-operator"
    : "kubernetes-models";
  return join(modules, pkg, apiVersion, `${kind}.js`);
}

let bad = 0;
for (const obj of objects) {
  const what = `${obj.kind}/${obj.metadata?.name}`;
  const file = modelFile(String(obj.apiVersion), String(obj.kind));
  const cls = existsSync(file) ? (await import(pathToFileURL(file).href))[obj.kind] : undefined;
  if (typeof cls !== "function") {
    console.log(`INVALID ${what}: no schema for ${obj.apiVersion} ${obj.kind}`);
    bad++;
    continue;
  }
  try {
    new cls(obj).validate();
    console.log(`ok ${what} (${obj.apiVersion})`);
  } catch (e) {
    console.log(`INVALID ${what}: ${e.message}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
