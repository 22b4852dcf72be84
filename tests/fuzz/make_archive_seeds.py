#!/usr/bin/python3
"""Write the seed corpus of fuzz_archive (tests/fuzz/corpus/archive/).

Each seed is one byte choosing the attachment name in fuzz_archive.c
(0 a.zip, 1 a.tar.gz, 2 x.exe.gz, 3 a.7z, 4 a.rar, 5 a.bin) followed by the
archive bytes. Deterministic (fixed timestamps), so rerunning gives the same
files, except the two encrypted zips (random salt / IV):
python3 tests/fuzz/make_archive_seeds.py tests/fuzz/corpus/archive
"""
import bz2
import gzip
import io
import lzma
import os
import sys
import struct
import tarfile
import zipfile
import zlib

T = (2024, 1, 1, 0, 0, 0)


def zip_bytes(members, compression=zipfile.ZIP_DEFLATED):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", compression) as z:
        for name, data in members:
            z.writestr(zipfile.ZipInfo(name, T), data, compress_type=compression)
    return b.getvalue()


def tar_bytes(members, mode):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode=mode, format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1704067200
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()


def libarchive_bytes(fmt, members, options=None, passphrase=None):
    """An archive written by libarchive (via ctypes): 7z and encrypted zips,
    which Python's own modules cannot write."""
    import ctypes
    la = ctypes.CDLL("libarchive.so.13")
    la.archive_write_new.restype = ctypes.c_void_p
    la.archive_entry_new.restype = ctypes.c_void_p
    la.archive_write_data.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    la.archive_entry_set_pathname.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    la.archive_entry_set_size.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    la.archive_entry_set_filetype.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    la.archive_entry_set_perm.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    la.archive_entry_set_mtime.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_long]
    la.archive_entry_free.argtypes = [ctypes.c_void_p]
    a = ctypes.c_void_p(la.archive_write_new())
    assert la.archive_write_set_format_by_name(a, fmt.encode()) == 0
    if options:
        assert la.archive_write_set_options(a, options.encode()) == 0
    if passphrase:
        assert la.archive_write_set_passphrase(a, passphrase.encode()) == 0
    buf = ctypes.create_string_buffer(1 << 20)
    used = ctypes.c_size_t()
    assert la.archive_write_open_memory(a, buf, ctypes.sizeof(buf), ctypes.byref(used)) == 0
    for name, data in members:
        e = ctypes.c_void_p(la.archive_entry_new())
        la.archive_entry_set_pathname(e, name.encode())
        la.archive_entry_set_size(e, len(data))
        la.archive_entry_set_filetype(e, 0o100000)
        la.archive_entry_set_perm(e, 0o644)
        la.archive_entry_set_mtime(e, 1704067200, 0)
        assert la.archive_write_header(a, e) == 0
        la.archive_write_data(a, data, len(data))
        la.archive_entry_free(e)
    la.archive_write_close(a)
    la.archive_write_free(a)
    return buf.raw[:used.value]


def patch_7z_dict(b, byte):
    """A one-member LZMA2 7z (plain header) declaring another dictionary:
    archive.c's header check (a 1.5 GiB dictionary is over the limit)."""
    b = bytearray(b)
    off, size = struct.unpack_from("<QQ", b, 12)
    h = 32 + off
    i = b.index(bytes([0x21, 0x21, 0x01]), h)
    b[i + 3] = byte
    struct.pack_into("<I", b, 28, zlib.crc32(b[h:h + size]))
    struct.pack_into("<I", b, 8, zlib.crc32(b[12:32]))
    return bytes(b)


def rar3_bytes(entries):
    """A RAR 2.9 archive (no free tool writes one): marker, main header, a
    file header per (name, method, data) with its data, end of archive."""
    def block(typ, flags, body):
        h = struct.pack("<BHH", typ, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(h) & 0xFFFF) + h
    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, bytes(6))
    for name, method, data in entries:
        unp = len(data) if method == 0x30 else 1 << 20
        body = struct.pack("<IIBIIBBHI", len(data), unp, 2, zlib.crc32(data), 0x5D870000, 29,
                           method, len(name), 0x20) + name
        out += block(0x74, 0x8000, body) + data
    return out + block(0x7B, 0x4000, b"")


def lzip_bytes(data, dict_byte=20):
    """An lzip member: header, raw LZMA (1 MiB dictionary, end marker),
    trailer; dict_byte as declared."""
    raw = lzma.compress(data, format=lzma.FORMAT_RAW,
                        filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 20}])
    tail = struct.pack("<IQQ", zlib.crc32(data), len(data), 6 + len(raw) + 20)
    return b"LZIP\x01" + bytes([dict_byte]) + raw + tail


def patch_xz_dict(b, byte):
    """An xz whose first block declares LZMA2 dictionary property byte."""
    b = bytearray(b)
    hs = (b[12] + 1) * 4
    i = b.index(bytes([0x21, 0x01]), 13)
    b[i + 2] = byte
    struct.pack_into("<I", b, 12 + hs - 4, zlib.crc32(b[12:12 + hs - 4]))
    return bytes(b)


def main(out):
    os.makedirs(out, exist_ok=True)
    pe = b"MZ" + b"\x90\x00" * 29 + b"\x40\x00\x00\x00" + b"PE\x00\x00\x4c\x01\x01\x00" + bytes(64)
    inner = zip_bytes([("deep.exe", pe)])
    seeds = {
        "zip-exe": b"\x00" + zip_bytes([("readme.txt", b"hello\n"), ("x.exe", pe)]),
        "zip-stored": b"\x00" + zip_bytes([("a.txt", b"a" * 100)], zipfile.ZIP_STORED),
        "zip-nested": b"\x00" + zip_bytes([("inner.zip", inner), ("n.txt", b"n")]),
        "zip-bzip2": b"\x00" + zip_bytes([("b.txt", b"b" * 1000)], zipfile.ZIP_BZIP2),
        "zip-high-ratio": b"\x00" + zip_bytes([("zeros.bin", bytes(1 << 20))]),
        "tar-gz": b"\x01" + gzip.compress(tar_bytes([("d/p.exe", pe), ("d/r.txt", b"r\n")], "w"),
                                           mtime=0),
        "tar-bz2": b"\x01" + tar_bytes([("p.exe", pe)], "w:bz2"),
        "tar-xz": b"\x01" + tar_bytes([("p.exe", pe)], "w:xz"),
        "tar-plain": b"\x05" + tar_bytes([("p.exe", pe)], "w"),
        "gz-raw": b"\x02" + gzip.compress(pe, mtime=0),
        "bz2-raw": b"\x02" + bz2.compress(pe),
        "xz-raw": b"\x02" + lzma.compress(pe),
        "zip-cut": b"\x00" + zip_bytes([("x.exe", pe * 8)])[:150],
        "not-archive": b"\x05" + b"just text named a.bin\n",
        "7z": b"\x03" + libarchive_bytes("7zip", [("r.pdf", pe), ("n.txt", b"n\n")]),
        "7z-lzma2-one": b"\x03" + libarchive_bytes("7zip", [("r.exe", pe)], "compression=lzma2"),
        "7z-ppmd": b"\x03" + libarchive_bytes("7zip", [("r.exe", pe), ("n.txt", b"n\n")],
                                              "compression=ppmd"),
        "7z-dict-big": b"\x03" + patch_7z_dict(
            libarchive_bytes("7zip", [("r.exe", pe)], "compression=lzma2"), 37),
        "7z-in-gz": b"\x02" + gzip.compress(
            libarchive_bytes("7zip", [("r.exe", pe), ("n.txt", b"n\n")]), mtime=0),
        "zip-zipcrypt": b"\x00" + libarchive_bytes("zip", [("x.exe", pe)],
                                                    "zip:encryption=zipcrypt", "secret"),
        "zip-aes": b"\x00" + libarchive_bytes("zip", [("x.exe", pe)],
                                               "zip:encryption=aes256", "secret"),
    }
    # PPMd zip by 7-Zip (tests/scan/data/ppmd.zip: notes.txt, x.exe), and
    # the same declaring 256 MiB models (scan/archive.c entry_check())
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "scan", "data", "ppmd.zip"), "rb") as f:
        pz = f.read()
    big = bytearray(pz)
    for at in (39, 114):
        struct.pack_into("<H", big, at, 0x0FF5)
    one_mib = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
    xz1 = lzma.compress(pe, format=lzma.FORMAT_XZ, filters=one_mib)
    ppmd_blk = bytes([0xA5, 0xFF]) + bytes(range(256)) * 4
    seeds.update({
        "zip-ppmd": b"\x00" + pz,
        "zip-ppmd-big": b"\x00" + bytes(big),
        "rar3-stored": b"\x04" + rar3_bytes([(b"a.jpg", 0x30, b"\xff\xd8\xff" + bytes(20)),
                                              (b"x.exe", 0x30, pe)]),
        "rar3-ppmd-big": b"\x04" + rar3_bytes([(b"a.txt", 0x33, ppmd_blk), (b"x.exe", 0x30, pe)]),
        "xz-dict-big": b"\x02" + patch_xz_dict(xz1, 37),
        "xz-in-xz": b"\x02" + lzma.compress(xz1, format=lzma.FORMAT_XZ, filters=one_mib),
        "lzma-raw": b"\x02" + lzma.compress(pe, format=lzma.FORMAT_ALONE,
                                            filters=[{"id": lzma.FILTER_LZMA1,
                                                      "dict_size": 1 << 20}]),
        "lzip-raw": b"\x02" + lzip_bytes(pe),
    })
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus/archive")
