// deny-latest-tag in JavaScript: every container (init and regular) of a Deployment,
// StatefulSet, DaemonSet or Job must pin its image to a tag that is not floating (default
// `latest`), or to a digest, so rollouts are reproducible. Same behaviour as
// plugins/deny-latest-tag (Rust), settings included: `deniedTags = ["latest", "edge"]` in the
// `[settings]` of js_policy.toml beside js_policy.wasm.
import { log } from "wasmop:plugin/host@0.3.0"; // the contract's one import: the host's log
// In your own project: vendor wasmop-plugin.js next to this file and import "./wasmop-plugin.js".
import { policy, allow, deny, containers, setLog } from "../../plugins/sdk-js/wasmop-plugin.js";

setLog(log); // QuickJS has no console: the helper logs caught errors' stacks here (debug level)

const NAME = "js-deny-latest-tag";

/** The floating tags to refuse, from the settings (default `latest`); throws on bad settings. */
function deniedTags(settings) {
  if (settings == null || settings.deniedTags == null) return ["latest"];
  if (typeof settings !== "object") throw new Error(`${NAME}: its settings are not a JSON object`);
  const tags = settings.deniedTags;
  if (Array.isArray(tags) && tags.every((t) => typeof t === "string")) return tags;
  throw new Error(`${NAME}: settings.deniedTags must be a list of tags, got ${JSON.stringify(tags)}`);
}

/** Whether an image reference names a digest or a tag that is not among `denied`. */
export function isPinned(image, denied = ["latest"]) {
  if (image.includes("@")) return true;
  // The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
  const lastSegment = image.slice(image.lastIndexOf("/") + 1);
  const colon = lastSegment.lastIndexOf(":");
  if (colon < 0) return false;
  const tag = lastSegment.slice(colon + 1);
  return tag !== "" && !denied.includes(tag);
}

export const reviewer = policy({
  name: NAME,
  version: "0.1.0",
  appliesTo: ["apps/v1/Deployment", "apps/v1/StatefulSet", "apps/v1/DaemonSet", "batch/v1/Job"],
  review(_parent, child, settings) {
    let denied;
    try {
      denied = deniedTags(settings);
    } catch (err) {
      return deny(err.message);
    }
    for (const { name = "?", image = "" } of containers(child)) {
      if (!isPinned(image, denied)) {
        return deny(`container ${JSON.stringify(name)} uses image ${JSON.stringify(image)}; ` +
          `pin a version tag (e.g. nginx:1.27), not one of [${denied.map((t) => JSON.stringify(t)).join(", ")}]`);
      }
    }
    return allow();
  },
});
