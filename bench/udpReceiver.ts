import dgram from 'node:dgram';
import { serveIpc } from './lib/procs';

// Bench-only: Node's receive loop and nothing else. One UDP socket with the collector's 8 MiB
// receive buffer request, counting datagrams and lines (newlines + 1) and dropping them. What this
// loses, no Node collector on one socket could keep: it marks the ceiling of the single loop.

const socket = dgram.createSocket('udp4');
let datagrams = 0;
let lines = 0;
socket.on('message', (message) => {
  datagrams++;
  let count = 1;
  for (let i = message.indexOf(10); i !== -1; i = message.indexOf(10, i + 1)) count++;
  lines += count;
});

serveIpc((message) => {
  if (message.cmd !== 'stats') throw new Error(`unknown command ${message.cmd}`);
  return { datagrams, lines };
});

socket.bind(0, '127.0.0.1', () => {
  socket.setRecvBufferSize(Number(process.env.RECV_BUFFER_BYTES));
  process.send?.({ ready: true, port: socket.address().port, recvBufferBytes: socket.getRecvBufferSize() });
});
