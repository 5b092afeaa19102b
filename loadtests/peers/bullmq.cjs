// BullMQ doing what the scheduling benchmark has Paddock do, on the same
// Redis: add JOBS jobs, ADDERS adds in flight at once (as requests arrive
// at an API), then WORKERS workers with CONCURRENCY slots each take them, run
// a job that does nothing, and complete them.
// Prints one JSON line: jobs, seconds (first add to last completion),
// add_seconds, jobs_per_second, redis_commands_per_job, version.
// Usage: node bullmq.cjs <redis port> <jobs> <workers> <concurrency> <adders>
const { Queue, Worker } = require("bullmq");
const { execFileSync } = require("child_process");

const [port, jobs, workers, concurrency, adders] = process.argv.slice(2).map(Number);
const connection = { host: "127.0.0.1", port };
const name = `bench-${process.pid}-${Date.now()}`;

function commandsProcessed() {
  const info = execFileSync("redis-cli", ["-p", String(port), "info", "stats"]).toString();
  return Number(/total_commands_processed:(\d+)/.exec(info)[1]);
}

async function main() {
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  const before = commandsProcessed();
  const started = process.hrtime.bigint();
  let next = 0;
  const adder = async () => {
    while (next < jobs) {
      const i = next++;
      await queue.add("run", { tenant: `t${i % 20}`, repo: `acme/r${i % 100}` });
    }
  };
  await Promise.all(Array.from({ length: adders }, adder));
  const added = process.hrtime.bigint();
  let completed = 0;
  let resolveDone;
  const done = new Promise((resolve) => (resolveDone = resolve));
  const pool = [];
  for (let w = 0; w < workers; w++) {
    const worker = new Worker(name, async () => {}, { connection, concurrency, autorun: false });
    worker.on("completed", () => {
      completed += 1;
      if (completed === jobs) resolveDone();
    });
    worker.on("failed", (job, err) => {
      console.error(`job failed: ${err}`);
      process.exit(1);
    });
    pool.push(worker);
    worker.run();
  }
  await done;
  const finished = process.hrtime.bigint();
  const commands = commandsProcessed() - before;
  await Promise.all(pool.map((w) => w.close()));
  await queue.obliterate({ force: true });
  await queue.close();
  const seconds = Number(finished - started) / 1e9;
  console.log(
    JSON.stringify({
      jobs,
      seconds,
      add_seconds: Number(added - started) / 1e9,
      jobs_per_second: jobs / seconds,
      redis_commands_per_job: commands / jobs,
      version: require("bullmq/package.json").version,
    }),
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
