#!/usr/bin/env node
// `keyshade run` as its CLI does it (apps/cli/src/commands/run.command.ts, early 2026), for
// tether's benchmark to follow the test server side by side with tether: socket.io-client
// 4.7 on the websocket transport with the token header; register on every connect (adding
// the listeners again each time, as keyshade run does); sleep 3 s; fetch secrets and
// variables over REST and decrypt them with eccrypto; start the command through a shell in
// its own process group with the values in its environment and its output prefixed; on each
// configuration-updated event, decrypt if needed, then SIGKILL the child's group and start
// it again. Each event is logged ("Configuration change received from API (name: X)").
//
// Usage: node keyshade-run.js --url URL --token TOKEN --workspace W --project P
//          --environment E --private-key HEX [--quit-on-decryption-failure] -- COMMAND...
"use strict";

const { spawn } = require("child_process");
const { io } = require("socket.io-client");

const eccrypto = (() => {
  // eccrypto announces its JS fallback with console.info; keep stdout for the log lines.
  const info = console.info;
  console.info = () => {};
  try {
    return require("eccrypto");
  } finally {
    console.info = info;
  }
})();

const opts = { quitOnDecryptionFailure: false };
const argv = process.argv.slice(2);
const sep = argv.indexOf("--");
if (sep < 0) usage("no command after --");
for (let i = 0; i < sep; i++) {
  const flag = argv[i];
  if (flag === "--quit-on-decryption-failure") {
    opts.quitOnDecryptionFailure = true;
    continue;
  }
  const key = { "--url": "baseUrl", "--token": "apiKey", "--workspace": "workspace",
    "--project": "project", "--environment": "environment", "--private-key": "privateKey" }[flag];
  if (!key || i + 1 >= sep) usage(`bad flag ${flag}`);
  opts[key] = argv[++i];
}
const command = argv.slice(sep + 1).join(" ");

function usage(msg) {
  console.error(`keyshade-run: ${msg}`);
  process.exit(64);
}

const log = (level, msg) => console.log(`[${new Date().toISOString()}] ${level} ${msg}`);

const env = {};
let child = null;

async function decrypt(privateKey, data) {
  const parsed = JSON.parse(data);
  const decrypted = await eccrypto.decrypt(Buffer.from(privateKey, "hex"), {
    iv: Buffer.from(parsed.iv),
    ephemPublicKey: Buffer.from(parsed.ephemPublicKey),
    ciphertext: Buffer.from(parsed.ciphertext),
    mac: Buffer.from(parsed.mac),
  });
  return decrypted.toString();
}

async function checkApiKeyValidity() {
  log("INFO", "Checking API key validity...");
  const r = await fetch(`${opts.baseUrl}/api/api-key/access/live-updates`, {
    headers: { "x-keyshade-token": opts.apiKey },
  });
  if (!r.ok) throw new Error("API key is not valid. Please check the key and try again.");
  log("INFO", "API key is valid!");
}

function connectToSocket() {
  log("INFO", "Connecting to socket...");
  const host = opts.baseUrl.substring(opts.baseUrl.lastIndexOf("/") + 1);
  const ws = opts.baseUrl.startsWith("https") ? "wss" : "ws";
  const ioClient = io(`${ws}://${host}/change-notifier`, {
    autoConnect: false,
    extraHeaders: { "x-keyshade-token": opts.apiKey },
    transports: ["websocket"],
  });
  ioClient.connect();
  ioClient.on("connect", () => {
    ioClient.emit("register-client-app", {
      workspaceSlug: opts.workspace,
      projectSlug: opts.project,
      environmentSlug: opts.environment,
    });
    ioClient.on("configuration-updated", async (data) => {
      log("INFO", `Configuration change received from API (name: ${data.name})`);
      if (!data.isPlaintext) {
        try {
          data.value = await decrypt(opts.privateKey, data.value);
        } catch (e) {
          if (opts.quitOnDecryptionFailure) {
            log("ERROR", `Decryption failed for ${data.name}. Stopping the process.`);
            process.exit(1);
          }
          log("WARN", `Decryption failed for ${data.name}. Skipping this configuration.`);
          return;
        }
      }
      env[data.name] = data.value;
      restartCommand();
    });
    ioClient.on("client-registered", (r) => {
      if (r.success) {
        log("INFO", "Successfully registered to API");
      } else {
        log("ERROR", `Error registering to API: ${r.message}`);
        process.exit(1);
      }
    });
  });
}

async function prefetchConfigurations() {
  log("INFO", "Prefetching configurations...");
  const get = async (kind) => {
    const r = await fetch(`${opts.baseUrl}/api/${kind}/${opts.project}/${opts.environment}`, {
      headers: { "x-keyshade-token": opts.apiKey },
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.message);
    return body;
  };
  const secrets = await get("secret");
  const variables = await get("variable");
  for (const s of secrets) env[s.name] = await decrypt(opts.privateKey, s.value);
  for (const v of variables) env[v.name] = v.value;
  log("INFO", `Fetched ${secrets.length + variables.length} configurations `
    + `(${secrets.length} secrets, ${variables.length} variables)`);
}

function spawnCommand() {
  child = spawn(command, {
    stdio: ["inherit", "pipe", "pipe"],
    shell: true,
    env: { ...process.env, ...env },
    detached: true,
  });
  child.stdout.on("data", (d) => process.stdout.write(`[COMMAND] ${d}`));
  child.stderr.on("data", (d) => process.stderr.write(`[COMMAND] ${d}`));
  child.on("exit", (code) => {
    if (code === 0) {
      log("INFO", "Command exited successfully!");
      process.exit(1);
    }
  });
}

function killCommand() {
  if (child !== null) {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch (e) {
      // already gone
    }
  }
}

function restartCommand() {
  killCommand();
  spawnCommand();
}

(async () => {
  await checkApiKeyValidity();
  connectToSocket();
  await new Promise((r) => setTimeout(r, 3000));
  await prefetchConfigurations();
  spawnCommand();
  process.on("SIGINT", () => {
    killCommand();
    process.exit(0);
  });
})().catch((e) => {
  log("ERROR", e.message);
  process.exit(1);
});
