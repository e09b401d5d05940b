#!/usr/bin/python3
"""The libvirt-python side of the libvirt benchmark: N lifecycles (define, start, destroy,
undefine) on one connection, sequentially, timed with a monotonic clock.

    /usr/bin/python3 tests/libvirt/lifecycle-python.py URI N

Prints `LIFECYCLES=N` and `SECONDS=…` on stdout. Domains are named `bench-py-<i>` and
removed again; the domain XML matches what Hyperplane's driver defines for the test
driver (type `test`, one vcpu, 256 MiB, no disk)."""
import sys
import time

import libvirt

uri, count = sys.argv[1], int(sys.argv[2])
connection = libvirt.open(uri)
started = time.monotonic()
for index in range(count):
    xml = f"""<domain type='test'>
  <name>bench-py-{index}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""
    domain = connection.defineXML(xml)
    domain.create()
    domain.destroy()
    domain.undefine()
elapsed = time.monotonic() - started
connection.close()
print(f"LIFECYCLES={count}")
print(f"SECONDS={elapsed:.6f}")
