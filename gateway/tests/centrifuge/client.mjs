// A real `centrifuge` SDK client. Prints one JSON line per event on stdout so the Rust test that
// started it can assert on what the SDK saw; it never decides pass or fail itself.
//
// Environment: HUB_WS_URL, HUB_TOKEN, HUB_CHANNEL (a channel to subscribe to besides the
// personal one), HUB_EXPECT (publications to wait for before exiting), HUB_NEXT_TOKEN (given to
// the SDK when it asks to refresh its token).
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const { HUB_WS_URL, HUB_TOKEN, HUB_CHANNEL, HUB_EXPECT, HUB_NEXT_TOKEN } = process.env;
const expected = Number(HUB_EXPECT ?? '1');
const print = (event) => process.stdout.write(JSON.stringify(event) + '\n');
let received = 0;

const options = { token: HUB_TOKEN, websocket: WebSocket, name: 'sdk-test' };
if (HUB_NEXT_TOKEN) {
  options.getToken = async () => {
    print({ event: 'get_token' });
    return HUB_NEXT_TOKEN;
  };
}
const client = new Centrifuge(HUB_WS_URL, options);

const count = () => {
  received += 1;
  if (received >= expected) {
    client.disconnect();
    setTimeout(() => process.exit(0), 50);
  }
};

client.on('connected', (ctx) => print({ event: 'connected', client: ctx.client, transport: ctx.transport }));
client.on('disconnected', (ctx) => print({ event: 'disconnected', code: ctx.code, reason: ctx.reason }));
client.on('error', (ctx) => print({ event: 'error', message: String(ctx.error?.message ?? ctx.error) }));
client.on('subscribed', (ctx) => print({ event: 'server_subscribed', channel: ctx.channel, recoverable: ctx.recoverable }));
client.on('publication', (ctx) => {
  print({ event: 'publication', channel: ctx.channel, offset: ctx.offset, data: ctx.data });
  count();
});

if (HUB_CHANNEL) {
  const sub = client.newSubscription(HUB_CHANNEL);
  sub.on('subscribed', (ctx) => print({ event: 'subscribed', channel: ctx.channel, recoverable: ctx.recoverable, epoch: ctx.streamPosition?.epoch }));
  sub.on('error', (ctx) => print({ event: 'subscription_error', channel: HUB_CHANNEL, code: ctx.error?.code }));
  sub.on('publication', (ctx) => {
    print({ event: 'publication', channel: HUB_CHANNEL, offset: ctx.offset, data: ctx.data });
    count();
  });
  sub.subscribe();
}
client.connect();
setTimeout(() => { print({ event: 'timeout' }); process.exit(2); }, 20000);
