#!/usr/bin/python3
"""Speak libvirt's remote protocol by hand (no libvirt library): a wire-format oracle
for the Rust transport. Stdlib only.

  wire-probe.py [HOST:PORT] [URI]     (default 127.0.0.1:16509 test:///default)

Frame: u32 total length (itself included), then the 24-byte header
  prog=0x20008086 (REMOTE) vers=1 proc type(0 call,1 reply,2 message,3 stream)
  serial status(0 ok,1 error,2 continue), then the XDR payload.
An error reply's payload is virNetMessageError (code, domain, message, ...).
"""
import socket
import struct
import sys

PROG, VERS = 0x20008086, 1
HDR = struct.Struct(">IIIiIi")


def xdr_string(s):
    b = s.encode()
    return struct.pack(">I", len(b)) + b + b"\0" * (-len(b) % 4)


def read_string(buf, off):
    n = struct.unpack_from(">I", buf, off)[0]
    return buf[off + 4:off + 4 + n].decode(), off + 4 + n + (-n % 4)


class Conn:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.serial = 0

    def call(self, proc, payload=b""):
        self.serial += 1
        body = HDR.pack(PROG, VERS, proc, 0, self.serial, 0) + payload
        self.sock.sendall(struct.pack(">I", len(body) + 4) + body)
        n = struct.unpack(">I", self.sock.recv(4, socket.MSG_WAITALL))[0]
        pkt = self.sock.recv(n - 4, socket.MSG_WAITALL)
        _, _, rproc, rtype, rserial, status = HDR.unpack_from(pkt)
        assert (rproc, rtype, rserial) == (proc, 1, self.serial), (rproc, rtype, rserial)
        if status == 1:
            code, domain = struct.unpack_from(">ii", pkt, 24)
            has_msg = struct.unpack_from(">I", pkt, 32)[0]
            msg = read_string(pkt, 36)[0] if has_msg else ""
            raise RuntimeError(f"libvirt error code={code} domain={domain}: {msg}")
        return pkt[24:]


def main():
    addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:16509"
    uri = sys.argv[2] if len(sys.argv) > 2 else "test:///default"
    c = Conn(addr)
    auth = c.call(66)  # AUTH_LIST: remote_auth_type types<>
    print("auth types:", struct.unpack_from(f">{struct.unpack_from('>I', auth)[0]}i", auth, 4))
    # CONNECT_OPEN: remote_string name (optional: 1 + string), int flags
    c.call(1, struct.pack(">I", 1) + xdr_string(uri) + struct.pack(">I", 0))
    print("lib version:", struct.unpack(">Q", c.call(157))[0])  # CONNECT_GET_LIB_VERSION
    info = c.call(6)  # NODE_GET_INFO: char model[32] is 32 XDR ints (4 bytes per char!)
    model = bytes(struct.unpack_from(">32i", info)).rstrip(b"\0").decode()
    memory, cpus, mhz, nodes, sockets, cores, threads = struct.unpack_from(">Q6i", info, 128)
    print(f"node: model={model} memory={memory}KiB cpus={cpus} mhz={mhz}")
    try:
        c.call(9999)
    except RuntimeError as e:
        print("unknown procedure ->", e)
    c.call(2)  # CONNECT_CLOSE
    print("ok")


if __name__ == "__main__":
    main()
