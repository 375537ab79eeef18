// The part of statsd-client 0.4's API that test/statsdClients.test.ts uses (the package ships no
// types).
declare module 'statsd-client' {
  interface Options {
    host?: string;
    port?: number;
    /** Flush interval of its buffer, in ms. */
    socketTimeout?: number;
    maxBufferSize?: number;
  }
  class StatsdClient {
    constructor(options?: Options);
    increment(name: string, delta?: number, tags?: Record<string, string>): void;
    gauge(name: string, value: number, tags?: Record<string, string>): void;
    timing(name: string, ms: number, tags?: Record<string, string>): void;
    close(): void;
  }
  export = StatsdClient;
}
