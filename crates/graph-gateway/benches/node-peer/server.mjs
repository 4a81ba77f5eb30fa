// The peer for the subscriber bench: the reference `graphql-ws` server on Node with the same
// subscription shape as graph-gateway (`onAnalysisStarted`, each client only its own events).
// The user comes from `connectionParams.user` (no token checks: that only flatters the peer).
// POST /publish {"users": ["u1", ...], "stamp": "<ns>"} publishes one event per user.
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { useServer } from 'graphql-ws/use/ws';
import { buildSchema } from 'graphql';

const schema = buildSchema(`
  type AnalysisStarted { analysisId: String, uploadId: String, objectKey: String!, correlationId: String }
  type Query { ping: String! }
  type Subscription { onAnalysisStarted: AnalysisStarted! }
`);

const listeners = new Map(); // user -> Set<push>

function subscribeUser(user) {
  const queue = [];
  let wake = null;
  const push = (event) => { queue.push(event); if (wake) { wake(); wake = null; } };
  let set = listeners.get(user);
  if (!set) { set = new Set(); listeners.set(user, set); }
  set.add(push);
  const iterator = {
    async next() {
      while (queue.length === 0) await new Promise((r) => { wake = r; });
      return { value: { onAnalysisStarted: queue.shift() }, done: false };
    },
    async return() { set.delete(push); return { value: undefined, done: true }; },
    [Symbol.asyncIterator]() { return this; },
  };
  return iterator;
}

const roots = {
  ping: () => 'pong',
  onAnalysisStarted: (_args, context) => subscribeUser(context.user),
};

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') { res.end('ok'); return; }
  if (req.method === 'POST' && req.url === '/publish') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const { users, stamp } = JSON.parse(body);
      for (const user of users) {
        const set = listeners.get(user);
        if (!set) continue;
        const event = { analysisId: user, uploadId: user, objectKey: 'images/bench.jpg', correlationId: stamp };
        for (const push of set) push(event);
      }
      res.end('ok');
    });
    return;
  }
  res.statusCode = 404; res.end();
});

const wss = new WebSocketServer({ server, path: '/graphql' });
useServer({
  schema,
  roots: { query: roots, subscription: roots },
  context: (ctx) => ({ user: String(ctx.connectionParams?.user ?? '') }),
}, wss);

const port = Number(process.env.PORT || 4000);
server.listen(port, '127.0.0.1', () => console.log(`node graphql-ws peer on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
