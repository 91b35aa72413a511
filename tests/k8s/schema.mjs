// tests/k8s/schema.mjs — validate Kubernetes objects against the API's OpenAPI schemas,
// offline, with the models of the npm package kubernetes-models (types, required fields,
// enums, formats; it does not reject unknown fields).
// Reads a JSON array of {file, doc} on stdin; prints one JSON line per object:
// {"file", "kind", "name", "ok", "error"}.
import { readFileSync } from "node:fs";

const items = JSON.parse(readFileSync(0, "utf8"));
for (const { file, doc } of items) {
  const kind = doc.kind, name = doc.metadata?.name;
  const out = { file, kind, name, ok: false, error: "" };
  try {
    const [group, version] = doc.apiVersion.includes("/")
      ? doc.apiVersion.split("/")
      : ["", doc.apiVersion];
    const path = group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
    let mod;
    try {
      mod = await import(path);
    } catch {
      throw new Error(`no schema for ${doc.apiVersion} ${kind} (unknown kind or API version)`);
    }
    new mod[kind](doc).validate();
    out.ok = true;
  } catch (e) {
    out.error = String(e.message || e).split("\n").slice(0, 4).join(" | ");
  }
  console.log(JSON.stringify(out));
}
