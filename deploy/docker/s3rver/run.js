// run.js — start s3rver's command line as the container's main process (PID 1).
// Node installs no SIGTERM/SIGINT handler, and PID 1 ignores signals without one: without
// these lines `docker stop` would wait for its timeout and then SIGKILL.
'use strict';
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
require('/opt/s3rver/node_modules/s3rver/bin/s3rver.js');
