#!/usr/bin/python3
"""Write the inputs of docs/BENCHMARKS.md "2026-12-07, archive decoder memory
checks" into DIR (not kept in the repository; deterministic except the
7-Zip zip's timestamps):

    python3 tests/scan/decoder_mem_samples.py DIR

zip and RAR 2.9 entries whose first data bytes declare a PPMd model, xz /
lzma / lzip streams declaring their dictionary, each with a small control.
The hostile zip and RAR entries are followed by random bytes (libarchive
allocates the model, then fails on them); zip_ppmd256m_words.zip is real
PPMd data (7-Zip, 256 MiB model, order 16, 18 MiB of random words: the
model fills), and needs 7z (p7zip-full) on the PATH.
"""
import lzma
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib


def zip_raw(entries):
    """A zip of (name, method, data, unpacked size, crc), as given."""
    out, cd = b"", b""
    for name, method, data, unp, crc in entries:
        lh = struct.pack("<IHHHHHIIIHH", 0x04034B50, 63, 0, method, 0, 0, crc, len(data), unp,
                         len(name), 0) + name
        cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 63, 63, 0, method, 0, 0, crc,
                          len(data), unp, len(name), 0, 0, 0, 0, 0, len(out)) + name
        out += lh + data
    return out + cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries),
                                  len(cd), len(out), 0)


def rar3(entries):
    """A RAR 2.9 archive of (name, method, data, unpacked size)."""
    def block(typ, flags, body):
        h = struct.pack("<BHH", typ, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(h) & 0xFFFF) + h
    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, bytes(6))
    for name, method, data, unp in entries:
        body = struct.pack("<IIBIIBBHI", len(data), unp, 2, zlib.crc32(data), 0x5D870000, 29,
                           method, len(name), 0x20) + name
        out += block(0x74, 0x8000, body) + data
    return out + block(0x7B, 0x4000, b"")


def main(d):
    os.makedirs(d, exist_ok=True)
    rng = random.Random(20261207)
    rnd = bytes(rng.getrandbits(8) for _ in range(2 << 20))
    mz = b"MZ" + bytes(100)
    exe = (b"x.exe", 0, mz, len(mz), zlib.crc32(mz))

    def w(name, data):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)

    # PPMd8 parameters: order - 1 (7: order 8), MiB - 1 in bits 4-11
    for mib in (16, 256):
        p = struct.pack("<H", 7 | (mib - 1) << 4) + rnd
        w("zip_ppmd%dm.zip" % mib, zip_raw([(b"a.txt", 98, p, 64 << 20, 0), exe]))
        # RAR block: PPMd | new model | order - 1, then MiB - 1
        b = bytes([0x80 | 0x20 | 0x07, mib - 1]) + rnd
        w("rar_ppmd%dm.rar" % mib, rar3([(b"a.txt", 0x33, b, 64 << 20), (b"x.exe", 0x30, mz,
                                                                         len(mz))]))
    a = b"A" * (48 << 20)
    one = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
    x = bytearray(lzma.compress(a, format=lzma.FORMAT_XZ, filters=one))
    w("xz_dict1m.xz", x)
    hs = (x[12] + 1) * 4
    i = x.index(b"\x21\x01", 12)
    x[i + 2] = 37  # 1.5 GiB
    struct.pack_into("<I", x, 12 + hs - 4, zlib.crc32(bytes(x[12:12 + hs - 4])))
    w("xz_dict1536m.xz", x)
    lz = bytearray(lzma.compress(a, format=lzma.FORMAT_ALONE,
                                 filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 20}]))
    w("lzma_dict1m.lzma", lz)
    struct.pack_into("<I", lz, 1, 1 << 27)
    w("lzma_dict128m.lzma", lz)
    struct.pack_into("<I", lz, 1, 0xFFFFFFFF)
    w("lzma_dict4g.lzma", lz)
    raw = lzma.compress(a, format=lzma.FORMAT_RAW,
                        filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 20}])
    tail = struct.pack("<IQQ", zlib.crc32(a), len(a), 6 + len(raw) + 20)
    w("lz_dict1m.lz", b"LZIP\x01\x14" + raw + tail)
    w("lz_dict512m.lz", b"LZIP\x01\x1d" + raw + tail)
    if shutil.which("7z"):
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                         for _ in range(rng.randint(3, 9))) for _ in range(2000)]
        with tempfile.TemporaryDirectory() as t:
            txt = os.path.join(t, "words.txt")
            with open(txt, "w") as f:
                n = 0
                while n < 18 << 20:
                    s = rng.choice(words) + " "
                    f.write(s)
                    n += len(s)
            out = os.path.abspath(os.path.join(d, "zip_ppmd256m_words.zip"))
            if os.path.exists(out):
                os.unlink(out)
            subprocess.run(["7z", "a", "-tzip", "-mm=PPMd", "-mmem=256m", "-mo=16", out, txt],
                           check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "decoder-mem-samples")
