// Preloaded into Etsy statsd (node --require) by bench/lib/statsd.ts: statsd sets no receive
// buffer, so against our collector's 32 MiB it had the kernel's default (rmem_default, 208 KiB
// here) and the comparison measured the buffers. Each UDP socket it binds asks for
// STATSD_RECV_BUFFER_BYTES, as our collector asks for COLLECTOR_RECV_BUFFER_BYTES, and says what
// the kernel granted on stderr.
const dgram = require('node:dgram');

const wanted = Number(process.env.STATSD_RECV_BUFFER_BYTES);
const bind = dgram.Socket.prototype.bind;
dgram.Socket.prototype.bind = function (...args) {
  this.once('listening', () => {
    this.setRecvBufferSize(wanted);
    process.stderr.write(`statsd recv buffer granted ${this.getRecvBufferSize()}\n`);
  });
  return bind.apply(this, args);
};
