// The realtime connection through the official `centrifuge` SDK (loaded as `globalThis.Centrifuge`
// from the vendored browser build). The personal channel `user:{id}` is a server-side subscription:
// the SDK recovers it after a drop from the last offset it saw. When the hub cannot recover (history
// lost), `onUnrecovered` lets pages reload what they show from the API.

const listeners = new Set();
const stateListeners = new Set();
const unrecoveredListeners = new Set();
let client = null;

export function onPublication(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function onState(listener) {
  stateListeners.add(listener);
  return () => stateListeners.delete(listener);
}

export function onUnrecovered(listener) {
  unrecoveredListeners.add(listener);
  return () => unrecoveredListeners.delete(listener);
}

function emitState(state) {
  for (const listener of stateListeners) listener(state);
}

export function connect(getToken) {
  disconnect();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  client = new globalThis.Centrifuge(`${scheme}://${location.host}/connection/websocket`, {
    token: getToken(),
    getToken: async () => getToken() || "",
    name: "console",
    minReconnectDelay: 300,
    maxReconnectDelay: 5000,
  });
  client.on("state", (ctx) => emitState(ctx.newState));
  client.on("subscribed", (ctx) => {
    if (ctx.wasRecovering && !ctx.recovered) for (const listener of unrecoveredListeners) listener(ctx.channel);
  });
  client.on("publication", (ctx) => {
    for (const listener of listeners) listener(ctx.data, ctx.channel, ctx.offset);
  });
  emitState("connecting");
  client.connect();
  return client;
}

export function disconnect() {
  if (!client) return;
  client.removeAllListeners();
  client.disconnect();
  client = null;
  emitState("disconnected");
}

/** The SDK client (for a page that subscribes to a task channel of its own). */
export function sdk() {
  return client;
}
