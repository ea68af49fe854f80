// The console's vendored libraries are byte for byte the files of the npm packages pinned in
// package-lock.json (the console has no build step; the gateway embeds app/ as it is).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

const here = new URL("..", import.meta.url);
const vendored = [
  ["app/centrifuge.js", "node_modules/centrifuge/dist/centrifuge.js", "centrifuge"],
  ["app/uqr.mjs", "node_modules/uqr/dist/index.mjs", "uqr"],
];

for (const [copy, original, name] of vendored) {
  test(`${copy} is ${name}'s own file at the locked version`, () => {
    const lock = JSON.parse(readFileSync(new URL("package-lock.json", here)));
    const pinned = JSON.parse(readFileSync(new URL("package.json", here))).dependencies[name];
    assert.equal(lock.packages[`node_modules/${name}`].version, pinned);
    assert.ok(readFileSync(new URL(copy, here)).equals(readFileSync(new URL(original, here))),
      `${copy} differs from ${original}: copy it again (cp gateway/console/${original} gateway/console/${copy})`);
  });
}
