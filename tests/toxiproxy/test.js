// Toxiproxy's own Node client (the npm package toxiproxy-node-client) driving tcpfault's
// Toxiproxy API, with every toxic observed through the proxy on real sockets.
//
//   TOXIPROXY_URL=http://127.0.0.1:8474 node --test test.js
//
// The client must be resolvable: run `npm install` here, or point NODE_PATH at a node_modules
// that has it (tests/integration/test_toxiproxy.py does that). Everything listens on 127.0.0.1.
"use strict";

const { test, after } = require("node:test");
const assert = require("node:assert/strict");
const net = require("node:net");
const { Toxiproxy, ToxiproxyError } = require("toxiproxy-node-client");

const URL_BASE = (process.env.TOXIPROXY_URL || "http://127.0.0.1:8474").replace(/\/$/, "");
const toxiproxy = new Toxiproxy(URL_BASE);
const PREFIX = "tf_";  // every proxy this script makes; removed at the end

// ------------------------------------------------------------------------------------------
// sockets

const servers = [];

// Starts a TCP server on 127.0.0.1:0; onConn(socket) handles each connection.
async function startServer(onConn) {
  const srv = net.createServer((s) => {
    s.on("error", () => {});
    onConn(s);
  });
  await new Promise((res) => srv.listen(0, "127.0.0.1", res));
  servers.push(srv);
  return `127.0.0.1:${srv.address().port}`;
}

function portOf(listen) {
  const m = /:(\d+)$/.exec(listen);
  assert.ok(m, `listen address ${listen} has no port`);
  return Number(m[1]);
}

function connect(port) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.removeListener("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// Everything a socket receives until it closes (or `timeoutMs` passes): bytes, the number of
// reads, when the first byte came, whether it ended with a FIN, and the error code if any.
function collect(sock, timeoutMs = 5000) {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const out = { data: Buffer.alloc(0), reads: 0, firstDataMs: null, endMs: null, ended: false,
                  error: null, closed: false, closedMs: null, timedOut: false };
    const timer = setTimeout(() => {
      out.timedOut = true;
      sock.destroy();
    }, timeoutMs);
    sock.on("data", (d) => {
      if (out.firstDataMs === null) out.firstDataMs = Date.now() - t0;
      out.data = Buffer.concat([out.data, d]);
      out.reads++;
    });
    sock.on("end", () => {
      out.ended = true;
      out.endMs = Date.now() - t0;
    });
    sock.on("error", (e) => {
      if (!out.error) out.error = e.code || String(e);
    });
    sock.on("close", () => {
      clearTimeout(timer);
      out.closed = true;
      out.closedMs = Date.now() - t0;
      resolve(out);
    });
  });
}

// Sends `msg` and waits until as many bytes came back; returns the elapsed ms.
async function roundtrip(sock, msg = "ping") {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= msg.length) {
        sock.removeListener("data", onData);
        sock.removeListener("error", reject);
        try {
          assert.equal(got.toString(), msg);
          resolve(Date.now() - t0);
        } catch (e) {
          reject(e);
        }
      }
    };
    sock.on("data", onData);
    sock.once("error", reject);
    sock.write(msg);
  });
}

async function freshRoundtrip(port, msg = "ping") {
  const s = await connect(port);
  try {
    return await roundtrip(s, msg);
  } finally {
    s.destroy();
  }
}

// ------------------------------------------------------------------------------------------
// raw HTTP, to check the exact JSON the client parses

async function raw(method, path, body) {
  const init = { method };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers = { "Content-Type": "application/json" };
  }
  const res = await fetch(URL_BASE + path, init);
  const text = await res.text();
  // Toxiproxy's middleware gives every routed response a request id (rs/xid: 20 characters).
  assert.match(res.headers.get("x-toxiproxy-request-id") || "", /^[0-9a-v]{20}$/,
               `${method} ${path}: X-Toxiproxy-Request-Id`);
  return { status: res.status, text, json: text ? JSON.parse(text) : undefined };
}

async function newProxy(name, upstream, extra = {}) {
  const proxy = await toxiproxy.createProxy({ name: PREFIX + name, listen: "127.0.0.1:0",
                                              upstream, ...extra });
  return { proxy, port: portOf(proxy.listen) };
}

const BLOB = 30000;
let echoAddr, blobAddr, byeAddr;

after(async () => {
  try {
    const all = await toxiproxy.getAll();
    for (const name of Object.keys(all)) if (name.startsWith(PREFIX)) await all[name].remove();
  } finally {
    for (const s of servers) s.close();
  }
});

// ------------------------------------------------------------------------------------------

test("upstream servers", async () => {
  echoAddr = await startServer((s) => s.pipe(s));
  blobAddr = await startServer((s) => s.end(Buffer.alloc(BLOB, "x")));
  byeAddr = await startServer((s) => s.end("bye"));
});

test("version", async () => {
  const text = await toxiproxy.getVersion();
  assert.match(JSON.parse(text).version, /^\d+\.\d+\.\d+/);
});

test("create, read back, pass through, errors", async () => {
  const { proxy, port } = await newProxy("plain", echoAddr);
  assert.equal(proxy.name, PREFIX + "plain");
  assert.equal(proxy.enabled, true);
  assert.equal(proxy.upstream, echoAddr);
  assert.match(proxy.listen, /^127\.0\.0\.1:\d+$/);
  assert.notEqual(port, 0);
  await freshRoundtrip(port, "hello through tcpfault");

  const got = await toxiproxy.get(PREFIX + "plain");
  assert.deepEqual(got.toJson(), proxy.toJson());
  const shown = await raw("GET", `/proxies/${PREFIX}plain`);
  assert.equal(shown.status, 200);
  assert.deepEqual(Object.keys(shown.json), ["name", "listen", "upstream", "enabled", "toxics"]);
  assert.deepEqual(shown.json.toxics, []);
  const all = await toxiproxy.getAll();
  assert.ok(all[PREFIX + "plain"], "getAll() lists the proxy by name");

  await assert.rejects(newProxy("plain", echoAddr), (e) => e instanceof ToxiproxyError &&
                       /409/.test(e.message));
  await assert.rejects(toxiproxy.get(PREFIX + "missing"), /404/);
  const dup = await raw("POST", "/proxies", { name: PREFIX + "plain", upstream: echoAddr });
  assert.equal(dup.status, 409);
  assert.deepEqual(dup.json, { error: "proxy already exists", status: 409 });
  const missing = await raw("GET", `/proxies/${PREFIX}missing/toxics`);
  assert.deepEqual(missing.json, { error: "proxy not found", status: 404 });
  const badType = await raw("POST", `/proxies/${PREFIX}plain/toxics`, { type: "explode" });
  assert.deepEqual(badType.json, { error: "invalid toxic type", status: 400 });
  const badStream = await raw("POST", `/proxies/${PREFIX}plain/toxics`,
                              { type: "latency", stream: "sideways" });
  assert.equal(badStream.status, 400);
  assert.equal(badStream.json.error, "stream was invalid, can be either upstream or downstream");
  await assert.rejects(proxy.getToxic("nope"), /404/);
});

test("latency delays, update changes it for new connections, removal ends it", async () => {
  const { proxy, port } = await newProxy("latency", echoAddr);
  const toxic = await proxy.addToxic({ type: "latency", attributes: { latency: 300, jitter: 0 } });
  assert.deepEqual(toxic.toJson(), {
    attributes: { latency: 300, jitter: 0 }, name: "latency_downstream",
    stream: "downstream", toxicity: 1, type: "latency",
  });
  const slow = await freshRoundtrip(port);
  assert.ok(slow >= 280, `latency 300ms: roundtrip took ${slow}ms`);

  const updated = await toxic.update({ attributes: { latency: 50 } });
  assert.deepEqual(updated.attributes, { latency: 50, jitter: 0 });
  const back = await proxy.getToxic("latency_downstream");
  assert.deepEqual(back.toJson(), updated.toJson());
  const faster = await freshRoundtrip(port);
  assert.ok(faster >= 40 && faster < 280, `latency 50ms: roundtrip took ${faster}ms`);

  await toxic.remove();
  const fast = await freshRoundtrip(port);
  assert.ok(fast < 200, `no toxic: roundtrip took ${fast}ms`);
  assert.deepEqual((await raw("GET", `/proxies/${PREFIX}latency/toxics`)).json, []);
});

test("toxics also act on connections already open", async () => {
  const { proxy, port } = await newProxy("open", echoAddr);
  const s = await connect(port);
  await roundtrip(s, "before any toxic");
  const lat = await proxy.addToxic({ type: "latency", attributes: { latency: 300, jitter: 0 } });
  const t = await roundtrip(s, "with latency");
  assert.ok(t >= 280, `latency on an open connection: roundtrip took ${t}ms`);
  await lat.remove();

  // limit_data counts from the toxic's addition, as Toxiproxy's per-connection state does.
  await proxy.addToxic({ type: "limit_data", attributes: { bytes: 5 } });
  const done = collect(s, 5000);
  s.write("0123456789");
  const r = await done;
  assert.equal(r.data.toString(), "01234");
  assert.ok(r.closed && !r.timedOut);
});

test("an upstream toxic and toxicity 0", async () => {
  const { proxy, port } = await newProxy("stream", echoAddr);
  const up = await proxy.addToxic({ type: "latency", stream: "upstream", name: "slow_requests",
                                    attributes: { latency: 250, jitter: 0 } });
  assert.equal(up.stream, "upstream");
  assert.equal(up.name, "slow_requests");
  const t = await freshRoundtrip(port);
  assert.ok(t >= 230, `upstream latency 250ms: roundtrip took ${t}ms`);
  await up.remove();

  const never = await proxy.addToxic({ type: "latency", toxicity: 0,
                                       attributes: { latency: 1000, jitter: 0 } });
  assert.equal(never.toxicity, 0);
  const quick = await freshRoundtrip(port);
  assert.ok(quick < 500, `toxicity 0: roundtrip took ${quick}ms`);
});

test("bandwidth caps throughput (rate in KB/s of 1000 bytes)", async () => {
  const { proxy, port } = await newProxy("bandwidth", blobAddr);
  await proxy.addToxic({ type: "bandwidth", attributes: { rate: 20 } });  // 20000 B/s
  const r = await collect(await connect(port), 15000);
  assert.equal(r.data.length, BLOB);
  assert.ok(r.endMs >= 1000, `${BLOB} bytes at 20KB/s arrived in ${r.endMs}ms`);
});

test("timeout drops data; the connection closes once nothing came for `timeout`", async () => {
  const { proxy, port } = await newProxy("timeout", echoAddr);
  await proxy.addToxic({ type: "timeout", attributes: { timeout: 500 } });
  const s = await connect(port);
  const done = collect(s, 5000);
  s.write("anyone there?");
  const r = await done;
  assert.equal(r.data.length, 0, "timeout: nothing gets through");
  assert.ok(!r.timedOut, "timeout 500: the connection is closed");
  assert.ok(r.closedMs >= 400, `closed after ${r.closedMs}ms`);
});

test("reset_peer swallows the stream's first data, then resets", async () => {
  const { proxy, port } = await newProxy("reset", echoAddr);
  await proxy.addToxic({ type: "reset_peer", attributes: { timeout: 300 } });
  const s = await connect(port);
  const done = collect(s, 5000);
  s.write("echoed back, but held by the toxic");
  const r = await done;
  assert.equal(r.error, "ECONNRESET", `expected a RST, got ${JSON.stringify(r)}`);
  assert.equal(r.data.length, 0, "the held reply is discarded");
  assert.ok(r.closedMs >= 250, `reset after ${r.closedMs}ms, expected >= 300ms`);

  const { proxy: now, port: nowPort } = await newProxy("reset_now", echoAddr);
  await now.addToxic({ type: "reset_peer", attributes: { timeout: 0 } });
  const s2 = await connect(nowPort);
  const done2 = collect(s2, 5000);
  s2.write("x");
  const r2 = await done2;
  assert.equal(r2.error, "ECONNRESET");
  assert.equal(r2.data.length, 0);
});

test("slicer chops the stream into small reads", async () => {
  const { proxy, port } = await newProxy("slicer", blobAddr);
  await proxy.addToxic({ type: "slicer",
                         attributes: { average_size: 100, size_variation: 50, delay: 1000 } });
  const r = await collect(await connect(port), 20000);
  assert.equal(r.data.length, BLOB);
  // 30000 bytes in slices of 50..150 bytes, 1ms apart: a few hundred reads.
  assert.ok(r.reads >= 50, `only ${r.reads} reads`);
});

test("limit_data closes after exactly N bytes", async () => {
  const { proxy, port } = await newProxy("limit", blobAddr);
  await proxy.addToxic({ type: "limit_data", attributes: { bytes: 1000 } });
  const r = await collect(await connect(port), 5000);
  assert.equal(r.data.length, 1000);
  assert.ok(r.closed && !r.timedOut);
});

test("slow_close delays the FIN", async () => {
  const { proxy, port } = await newProxy("slowclose", byeAddr);
  await proxy.addToxic({ type: "slow_close", attributes: { delay: 600 } });
  const r = await collect(await connect(port), 5000);
  assert.equal(r.data.toString(), "bye");
  assert.ok(r.firstDataMs < 400, `data came after ${r.firstDataMs}ms`);
  assert.ok(r.ended, "the FIN arrives in the end");
  assert.ok(r.endMs >= 550, `FIN after ${r.endMs}ms, expected >= 600ms`);
});

test("disable refuses and closes; enable serves again", async () => {
  const { proxy, port } = await newProxy("down", echoAddr);
  const open = await connect(port);
  await roundtrip(open);
  const closed = collect(open, 5000);

  const down = await proxy.update({ enabled: false });
  assert.equal(down.enabled, false);
  assert.equal(down.listen, proxy.listen);
  await assert.rejects(connect(port), (e) => e.code === "ECONNREFUSED");
  const r = await closed;
  assert.ok(!r.timedOut, "the open connection is closed");

  const up = await proxy.update({ enabled: true });
  assert.equal(up.enabled, true);
  // Listening again before the answer, as Toxiproxy binds before it answers.
  const s = await connect(port);
  await roundtrip(s);
  s.destroy();
});

test("reset re-enables proxies and removes toxics", async () => {
  const { proxy, port } = await newProxy("reset_all", echoAddr);
  await proxy.addToxic({ type: "latency", attributes: { latency: 400, jitter: 0 } });
  await proxy.addToxic({ type: "timeout", stream: "upstream", attributes: { timeout: 0 } });
  await proxy.update({ enabled: false });
  await toxiproxy.reset();
  const shown = await raw("GET", `/proxies/${PREFIX}reset_all`);
  assert.equal(shown.json.enabled, true);
  assert.deepEqual(shown.json.toxics, []);
  const s = await connect(port);
  const t = await roundtrip(s);
  assert.ok(t < 300, `after reset: roundtrip took ${t}ms`);
  s.destroy();
});

test("populate creates, keeps and replaces proxies", async () => {
  const body = [
    { name: PREFIX + "pop_a", listen: "127.0.0.1:0", upstream: echoAddr },
    { name: PREFIX + "pop_b", listen: "127.0.0.1:0", upstream: echoAddr, enabled: false },
  ];
  const made = await toxiproxy.populate(body);
  assert.deepEqual(Object.keys(made).sort(), [PREFIX + "pop_a", PREFIX + "pop_b"]);
  assert.equal(made[PREFIX + "pop_a"].enabled, true);
  assert.equal(made[PREFIX + "pop_b"].enabled, false);
  const portA = portOf(made[PREFIX + "pop_a"].listen);
  await freshRoundtrip(portA);
  await assert.rejects(connect(portOf(made[PREFIX + "pop_b"].listen)),
                       (e) => e.code === "ECONNREFUSED");

  // Unchanged entries are left as they are, toxics included.
  await made[PREFIX + "pop_a"].addToxic({ type: "latency", attributes: { latency: 10 } });
  const again = await raw("POST", "/populate", body);
  assert.equal(again.status, 201);
  const a = again.json.proxies.find((p) => p.name === PREFIX + "pop_a");
  assert.equal(portOf(a.listen), portA);
  assert.equal(a.toxics.length, 1);

  // A changed upstream replaces the proxy.
  const changed = await raw("POST", "/populate",
                            [{ name: PREFIX + "pop_a", listen: "127.0.0.1:0", upstream: blobAddr }]);
  assert.equal(changed.json.proxies[0].upstream, blobAddr);
  assert.deepEqual(changed.json.proxies[0].toxics, []);

  const bad = await raw("POST", "/populate", [{ name: PREFIX + "pop_c" }]);
  assert.equal(bad.status, 400);
  assert.deepEqual(bad.json, { error: "missing required field: upstream at proxy 1",
                               status: 400, proxies: null });
});

test("delete", async () => {
  const { proxy, port } = await newProxy("gone", echoAddr);
  await proxy.remove();
  await assert.rejects(connect(port), (e) => e.code === "ECONNREFUSED");
  await assert.rejects(toxiproxy.get(PREFIX + "gone"), /404/);
});
