// A real `centrifuge` SDK client following one task through whatever node answers at HUB_WS_URL
// (a load balancer in front of several nodes). Prints one JSON line per task event it learns of,
// once, with the event's `seq`, whether by a publication (live or recovered from history) or, when the
// SDK reports it could not recover (`recovered: false`), by the HTTP backfill
// `GET /api/v1/tasks/{id}/events?after_seq=`. Exits once the task's terminal event is in. It never
// decides pass or fail: the Rust test that started it asserts.
//
// Environment: HUB_WS_URL, HUB_HTTP_URL, HUB_TOKEN, HUB_TASK.
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const { HUB_WS_URL, HUB_HTTP_URL, HUB_TOKEN, HUB_TASK } = process.env;
const print = (event) => process.stdout.write(JSON.stringify(event) + '\n');
const terminal = new Set(['succeeded', 'failed', 'canceled']);
let lastSeq = 0;
let done = false;
const offsets = new Set();
const known = new Set();

const finish = () => {
  if (done) return;
  done = true;
  client.disconnect();
  setTimeout(() => process.exit(0), 50);
};

const learn = (seq, state, via, offset) => {
  if (known.has(seq)) return;
  known.add(seq);
  print({ event: 'task_event', seq, state, via, offset });
  lastSeq = Math.max(lastSeq, seq);
  if (terminal.has(state)) finish();
};

const backfill = async () => {
  // From the start: the backfill may race live publications, and `learn` keeps each seq once.
  const response = await fetch(`${HUB_HTTP_URL}/api/v1/tasks/${HUB_TASK}/events?after_seq=0&limit=500`, {
    headers: { authorization: `Bearer ${HUB_TOKEN}` },
  });
  const body = await response.json();
  for (const item of body.items ?? []) {
    learn(item.seq, item.status, 'backfill');
  }
};

const client = new Centrifuge(HUB_WS_URL, {
  token: HUB_TOKEN,
  websocket: WebSocket,
  name: 'failover-test',
  minReconnectDelay: 100,
  maxReconnectDelay: 500,
});
client.on('connected', (ctx) => print({ event: 'connected', client: ctx.client }));
client.on('disconnected', (ctx) => print({ event: 'disconnected', code: ctx.code }));
client.on('connecting', (ctx) => print({ event: 'connecting', code: ctx.code, reason: ctx.reason }));

const sub = client.newSubscription(`task:${HUB_TASK}`);
sub.on('subscribed', async (ctx) => {
  print({ event: 'subscribed', recovered: ctx.recovered, was_recovering: ctx.wasRecovering, epoch: ctx.streamPosition?.epoch });
  // What happened before the first subscription, or what history could not give back.
  if (!ctx.wasRecovering || !ctx.recovered) await backfill();
});
sub.on('publication', (ctx) => {
  // The hub delivering one publication twice would show its offset twice.
  if (offsets.has(ctx.offset)) print({ event: 'duplicate', offset: ctx.offset, seq: ctx.data?.seq });
  offsets.add(ctx.offset);
  learn(ctx.data.seq, ctx.data.state, 'publication', ctx.offset);
});
sub.subscribe();
client.connect();
setTimeout(() => { print({ event: 'timeout', last_seq: lastSeq }); process.exit(2); }, 60000);
