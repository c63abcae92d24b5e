// A long-lived AWS SDK for JavaScript v3 client: see ./README.md one level up.
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";

const [seconds, interval] = process.argv.slice(2).map(Number);
const sts = new STSClient({});
const deadline = Date.now() + seconds * 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
while (Date.now() < deadline) {
  let line;
  try {
    const identity = await sts.send(new GetCallerIdentityCommand({}));
    line = { ok: true, arn: identity.Arn };
  } catch (error) {
    line = { ok: false, error: `${error.name}: ${error.message}` };
  }
  process.stdout.write(JSON.stringify(line) + "\n");
  await sleep(interval * 1000);
}
