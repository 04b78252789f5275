// Browser-like WebSocket clients for scripts/scale-out-demo.sh: N sessions through the
// balancer, each reconnecting after any close after a random 0.5-3 s (as the browser
// client does after 1012), reporting nothing but errors. Needs Node 20 with
// --experimental-websocket (Node 22 has WebSocket built in).
//   node --experimental-websocket scripts/scale-out-demo.mjs ws://127.0.0.1:8090 3000
const [base, countArg] = process.argv.slice(2);
const count = Number(countArg || 3000);
let open = 0;
let reconnects = 0;

function connect(i) {
  const ws = new WebSocket(`${base}/websocket/demo-${i}`);
  ws.onopen = () => { open += 1; };
  ws.onclose = (ev) => {
    if (ws.wasOpen) open -= 1;
    reconnects += 1;
    const delay = ev.code === 1013 ? 1000 + Math.random() * 5000 : 500 + Math.random() * 2500;
    setTimeout(() => connect(i), delay);
  };
  ws.addEventListener('open', () => { ws.wasOpen = true; });
}

for (let i = 0; i < count; i += 1) {
  // Spread the first connects over about two seconds.
  setTimeout(() => connect(i), (i / count) * 2000);
}
setInterval(() => process.stdout.write(`clients open=${open} reconnects=${reconnects}\n`), 5000).unref?.();
