#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (fuzz/seeds/<target>/).

Run from anywhere: python3 fuzz/seeds/make_seeds.py. The MKV and H.264 seeds are small excerpts
of the test vectors in tests/data; see README.md in this directory.
Deterministic: re-running it rewrites the same files.
"""
import hashlib
import hmac
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MEDIA = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data"))


def out(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frames(parts):
    return b"".join(struct.pack("<H", len(p)) + p for p in parts)


def chunk_variants(target, name, body, flags=(0, 1, 2, 3)):
    for fl in flags:
        out(target, f"{name}-{fl}", bytes([fl]) + body)


# ---------------------------------------------------------------- EBML helpers
def vint(n, width=None):
    if width is None:
        width = 1
        while n >= (1 << (7 * width)) - 1:
            width += 1
    return ((1 << (7 * width)) | n).to_bytes(width, "big")


def el(id_bytes, body, width=None):
    return id_bytes + vint(len(body), width) + body


def tags_chain(name, value):
    # As mkv::cluster::put_tag_chain writes it: 8-byte sizes.
    w = 8
    simple = el(b"\x45\xA3", name, w) + el(b"\x44\x87", value, w)
    return el(b"\x12\x54\xC3\x67", el(b"\x73\x73", el(b"\x67\xC8", simple, w), w), w)


def simple_block(track, rel, flags, payload):
    return el(b"\xA3", bytes([0x80 | track]) + struct.pack(">hB", rel, flags) + payload)


def read_vint(b, i, keep_marker=False):
    f = b[i]
    n = 8 - f.bit_length() + 1
    v = f if keep_marker else f & ((0xFF >> n) if n < 8 else 0)
    for x in b[i + 1 : i + n]:
        v = v << 8 | x
    return v, n


def elements(b, i=0, end=None):
    end = len(b) if end is None else end
    while i < end:
        id_, il = read_vint(b, i, True)
        sz, sl = read_vint(b, i + il)
        yield id_, i, il + sl, sz
        if id_ in (0x18538067, 0x1F43B675) and sz == (1 << (7 * sl)) - 1:
            i += il + sl  # unknown size: descend
        else:
            i += il + sl + sz


# ---------------------------------------------------------------- media excerpts
cpp = open(os.path.join(MEDIA, "kvs-cpp-test-stream-1_0.mkv"), "rb").read()
java = open(os.path.join(MEDIA, "kvs-java-clusters.mkv"), "rb").read()

# kvs-cpp-test-stream-1_0.mkv: EBML header, Segment (unknown size), Info, Tracks = bytes 0..277.
cpp_header = cpp[:277]
# Its first Cluster's Timecode and first SimpleBlock (H.264 IDR, 9801 payload bytes).
cl = list(elements(cpp, 277, 277 + 600))
cpp_blocks = [(o, h, s) for (i, o, h, s) in cl if i == 0xA3]
o, h, s = cpp_blocks[0]
first_block_payload = cpp[o + h + 4 : o + h + s]  # 4 = track, timecode, flags

# The avcC in the cpp stream's Tracks: find CodecPrivate (63A2).
at = cpp_header.find(b"\x63\xA2")
sz, sl = read_vint(cpp_header, at + 2)
avcc = cpp_header[at + 2 + sl : at + 2 + sl + sz]
n_sps = avcc[5] & 0x1F
p = 6
sps_list = []
for _ in range(n_sps):
    ln = struct.unpack(">H", avcc[p : p + 2])[0]
    sps_list.append(avcc[p + 2 : p + 2 + ln])
    p += 2 + ln
n_pps = avcc[p]
p += 1
pps_list = []
for _ in range(n_pps):
    ln = struct.unpack(">H", avcc[p : p + 2])[0]
    pps_list.append(avcc[p + 2 : p + 2 + ln])
    p += 2 + ln

# The IDR's NAL units (4-byte lengths), each cut to 48 bytes.
nals = []
q = 0
while q + 4 <= len(first_block_payload) and len(nals) < 4:
    ln = struct.unpack(">I", first_block_payload[q : q + 4])[0]
    nals.append(first_block_payload[q + 4 : q + 4 + ln][:48])
    q += 4 + ln


def annexb(nal_list, long_first=True):
    return b"".join((b"\x00\x00\x00\x01" if (i == 0 and long_first) else b"\x00\x00\x01") + n
                    for i, n in enumerate(nal_list))


# H.265 parameter sets: the vectors of src/codec/annexb.rs's tests.
vps = bytes.fromhex("40010c01ffff016000000300900000030000030078959809")
sps265 = bytes.fromhex(
    "420101016000000300900000030000030078a003c08010e596566924cafff000100016a020202080000003008000000f04")
pps265 = bytes.fromhex("4401c172b46240")
idr265 = bytes([0x26, 0x01, 0xAF, 0x80, 0x11, 0x22])
aud265 = bytes([0x46, 0x01, 0x50])
aud264 = bytes([0x09, 0xF0])


def hvcc(vps, sps, pps):
    v = bytearray([1, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0x78, 0xF0, 0, 0xFC, 0xFD, 0xF8, 0xF8, 0, 0, 0x0F, 3])
    for ty, n in ((32, vps), (33, sps), (34, pps)):
        v += bytes([0x80 | ty]) + struct.pack(">H", 1) + struct.pack(">H", len(n)) + n
    return bytes(v)


# ---------------------------------------------------------------- ack_parser
acks = [
    b'{"EventType":"BUFFERING","FragmentTimecode":1615717079836,"FragmentNumber":"91343852333181432392682062616596637219138936546"}\n',
    b'{"EventType":"RECEIVED","FragmentTimecode":1615717079836,"FragmentNumber":"91343852333181432392682062616596637219138936546"}\n',
    b'{"EventType":"PERSISTED","FragmentTimecode":1615717079836,"FragmentNumber":"91343852333181432392682062616596637219138936546"}\n',
    b'{"EventType":"ERROR","FragmentTimecode":1615717081836,"ErrorId":4004,"ErrorCode":"TIMECODE_LESSER_THAN_PREVIOUS"}\n',
    b'{"EventType":"IDLE"}\n',
]
chunk_variants("ack_parser", "session", b"".join(acks))
chunk_variants("ack_parser", "garbage", b'{"EventType":"PERSISTED",garbage}\r\n{"EventType":"ERROR"}' + acks[2], (1, 3))
chunk_variants("ack_parser", "noeol", b"".join(a.strip() for a in acks[:3]) + b'  {"EventType":"NEW"}', (0, 2))

# ---------------------------------------------------------------- annexb
h264_idr_au = annexb([aud264] + sps_list + pps_list + nals[:2])
h264_p_au = annexb([aud264, bytes([0x41, 0x9A, 0x02, 0x0C, 0x05])], long_first=False)
out("annexb", "h264-cpp-stream", bytes([0]) + frames([h264_idr_au, h264_p_au, h264_idr_au]))
out("annexb", "h264-caps", bytes([2]) + frames([h264_idr_au]))
h264_emul = annexb(sps_list + pps_list) + b"\x00\x00\x03\x00\x00\x01\x65\x88\x00\x00\x03\x01"
out("annexb", "h264-emulation", bytes([0]) + frames([h264_emul]))
h265_au = annexb([aud265, vps, sps265, pps265, idr265])
out("annexb", "h265", bytes([1]) + frames([h265_au, annexb([bytes([0x02, 0x01, 0xD0, 0x09])])]))
out("annexb", "h265-caps", bytes([3]) + frames([h265_au]))

# ---------------------------------------------------------------- codec_config
caps = lambda sel, a, b, cd=b"": bytes([sel]) + struct.pack("<II", a, b) + cd
out("codec_config", "avcc-cpp-stream", caps(0 | 8, 1280, 720, avcc))
out("codec_config", "avcc-nocaps", caps(5, 0, 0, avcc))
out("codec_config", "hvcc", caps(1 | 8, 1920, 1080, hvcc(vps, sps265, pps265)))
out("codec_config", "aac-lc-48k-stereo", caps(2 | 8, 48000, 2, bytes.fromhex("1190")))
out("codec_config", "aac-he-explicit-rate", caps(2, 0, 0, bytes.fromhex("2b8a086000")))
out("codec_config", "aac-from-caps", caps(3 | 8, 44100, 2))
out("codec_config", "aac-from-caps-odd-rate", caps(3 | 8, 22000, 8))
out("codec_config", "g711-alaw", caps(4 | 0x10, 8000, 1))
out("codec_config", "g711-mulaw", caps(4 | 8, 16000, 2))

# ---------------------------------------------------------------- fragment_metadata
def md(op, name, value=b""):
    return bytes([op]) + name + b"\x00" + value + b"\x00"


out("fragment_metadata", "mixed", md(0, b"camera", b"front door") + md(1, b"site", b"lab") + md(2, b"")
    + md(1, b"site", b"") + md(0, b"AWS_reserved", b"x") + md(3, b""))
out("fragment_metadata", "limits", md(0, b"n" * 128, b"v" * 256) + md(0, b"n" * 129, b"v") + md(0, b"", b"v")
    + b"".join(md(i % 2, b"k%d" % i, b"v") for i in range(27)) + md(2, b""))
out("fragment_metadata", "utf8", md(1, "caméra".encode(), "entrée ✓".encode()) + md(2, b""))

# ---------------------------------------------------------------- credential_file
out("credential_file", "static", "CREDENTIALS AKIDEXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
out("credential_file", "rotating",
    "CREDENTIALS ASIAEXAMPLE 2026-11-22T10:00:00Z s3cr3t IQoJb3JpZ2luX2VjEXAMPLE==\n")
out("credential_file", "fractional", "CREDENTIALS A 2026-11-22T10:00:00.123Z B C")
out("credential_file", "bad", "CREDENTIALS A 2026-13-45T99:00:00Z B C\nCREDENTIALS")

# ---------------------------------------------------------------- iot_response
st = lambda s: struct.pack("<H", s)
out("iot_response", "ok", st(200) + b'{"credentials":{"accessKeyId":"ASIAEXAMPLE","secretAccessKey":"s3cr3t/KEY","sessionToken":"IQoJb3JpZ2luX2VjEXAMPLE==","expiration":"2023-02-06T05:54:46Z"}}')
out("iot_response", "offset", st(200) + b'{"credentials":{"accessKeyId":"A","secretAccessKey":"B","sessionToken":"C","expiration":"2023-02-06T06:54:46.5+01:00"}}')
out("iot_response", "403-thing", st(403) + b'{"message":"Invalid thing name passed"}')
out("iot_response", "404", st(404) + b'{"Message":"Role alias does not exist"}')
out("iot_response", "fields", st(500) + b"endpoint=c2abc.credentials.iot.us-west-2.amazonaws.com:8443\ncert-path=/c\nkey-path=/k\nca-path=/ca\nrole-aliases=my alias/x\niot-thing-name=cam1\nconnection-timeout=2\ncompletion-timeout=7.5\n")
out("iot_response", "fields-bad", st(429) + b"endpoint=https://x/\ncert-path=/c\nkey-path=/k\nca-path=/ca\nrole-aliases=r\nconnection-timeout=-1\n")

# ---------------------------------------------------------------- local_mkv
# kvs-cpp-test-stream-1_0.mkv's header + two small unknown-size Clusters of its first frame,
# cut to 200 bytes, and an end-of-fragment Tags.
frag_payload = first_block_payload[:200]
# As mkv::cluster::put_cluster_start writes it: unknown size, 8-byte Timecode, Position 0.
cluster = lambda tc: b"\x1F\x43\xB6\x75\xFF\xE7\x88" + struct.pack(">Q", tc) + b"\xA7\x81\x00"
body = (cpp_header + tags_chain(b"camera", b"front") + cluster(1000)
        + simple_block(1, 0, 0x80, frag_payload) + simple_block(1, 40, 0x00, b"\x00\x00\x00\x02\x41\x9A")
        + tags_chain(b"AWS_KINESISVIDEO_END_OF_FRAGMENT", b"")
        + cluster(1080) + simple_block(1, 0, 0x80, frag_payload[:64]))
chunk_variants("local_mkv", "cpp-stream", body)
out("local_mkv", "cpp-stream-limits", bytes([4 | 16]) + body)
# kvs-java-clusters.mkv: EBML, Segment, SeekHead, Void, Info, Tracks, Tags (bytes 0..694) and a
# known-size Cluster with its first two frames cut short.
java_header = java[:694]
jc = list(elements(java, 694 + 12, 694 + 12 + 4000))
tc_el = [java[o : o + h + s] for (i, o, h, s) in jc if i == 0xE7][0]
jblocks = [(o, h, s) for (i, o, h, s) in jc if i == 0xA3]
kids = tc_el
for (o, h, s) in jblocks[:2]:
    hdr = java[o + h : o + h + 4]
    kids += el(b"\xA3", hdr + java[o + h + 4 : o + h + s][:120])
jbody = java_header + el(b"\x1F\x43\xB6\x75", kids)
chunk_variants("local_mkv", "java-clusters", jbody, (0, 3, 8 | 2))

# ---------------------------------------------------------------- local_sigv4 / local_control
def signed(path, headers, body, date="20250615T153320Z", secret="fuzz/secret+KEY", ak="AKIDFUZZ"):
    """A request signed like the C producer does it (as the fuzz target would verify it)."""
    hs = sorted((n.lower(), " ".join(v.split())) for n, v in headers)
    names = sorted(set(n for n, _ in hs))
    pq = path.split("?", 1)
    q = ""
    if len(pq) == 2:
        q = "&".join(sorted(pq[1].split("&")))
    canon_headers = "".join(f"{n}:{','.join(v for m, v in hs if m == n)}\n" for n in names)
    payload = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" if pq[0] == "/putMedia" else hashlib.sha256(body).hexdigest()
    canon = f"POST\n{pq[0]}\n{q}\n{canon_headers}\n{';'.join(names)}\n{payload}"
    scope = f"{date[:8]}/us-west-2/kinesisvideo/aws4_request"
    sts = f"AWS4-HMAC-SHA256\n{date}\n{scope}\n{hashlib.sha256(canon.encode()).hexdigest()}"
    k = ("AWS4" + secret).encode()
    for part in (date[:8], "us-west-2", "kinesisvideo", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    auth = f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"
    return headers + [("Authorization", auth)]


def request(flags, path, headers, body=b""):
    text = path + "\n" + "".join(f"{n}: {v}\n" for n, v in headers) + "\n"
    return bytes([flags]) + text.encode() + body


put_headers = [("Host", "127.0.0.1:4567"), ("X-Amz-Date", "20250615T153320Z"), ("x-amzn-stream-name", "cam"),
               ("x-amzn-fragment-timecode-type", "ABSOLUTE"), ("x-amzn-producer-start-timestamp", "1750001600.000"),
               ("transfer-encoding", "chunked"), ("connection", "keep-alive"), ("user-agent", "AWS-SDK-KVS-CPP-CLIENT/3.4.1 GCC/12.2.0 Linux/6.1.0 x86_64")]
out("local_sigv4", "putmedia-signed-ok", request(0x08, "/putMedia", signed("/putMedia", put_headers, b"")))
out("local_sigv4", "putmedia-resign", request(0x01, "/putMedia", put_headers))
desc = b'{"StreamName":"cam"}'
ctl_headers = [("host", "127.0.0.1:4567"), ("x-amz-date", "20250615T153320Z"), ("content-type", "application/json"),
               ("x-amz-security-token", "fuzz-session-token")]
out("local_sigv4", "describe-token", request(0x02 | 0x08, "/describeStream?b=2&a=%2F1", signed("/describeStream?b=2&a=%2F1", ctl_headers, desc), desc))
out("local_sigv4", "resign-aged", request(0x01 | 0x04 | (2 << 5), "/createStream?x=%41%zz&y", ctl_headers, desc))
out("local_sigv4", "unsigned", request(0x00, "/listStreams", [("host", "h"), ("authorization", "AWS4-HMAC-SHA256 Credential=AK/20250615/us-west-2/kinesisvideo/aws4_request, SignedHeaders=host, Signature=" + "0" * 64), ("x-amz-date", "20250231T235960Z")]))

ops = {"create": 0, "describe": 1, "list": 2, "delete": 3, "tag": 4, "untag": 5, "listtags": 6, "endpoint": 7}
reqs = lambda lst: frames([bytes([ops[o]]) + b for o, b in lst])
out("local_control", "lifecycle", reqs([
    ("create", b'{"StreamName":"cam","DataRetentionInHours":2,"MediaType":"video/h264","Tags":{"a":"b"}}'),
    ("describe", b'{"StreamName":"cam"}'),
    ("endpoint", b'{"StreamName":"cam","APIName":"PUT_MEDIA"}'),
    ("tag", b'{"StreamName":"cam","Tags":{"site":"lab"}}'),
    ("listtags", b'{"StreamName":"cam"}'),
    ("untag", b'{"StreamName":"cam","TagKeyList":["a"]}'),
    ("list", b'{"MaxResults":10,"StreamNameCondition":{"ComparisonOperator":"BEGINS_WITH","ComparisonValue":"c"}}'),
    ("delete", b'{"StreamARN":"arn:aws:kinesisvideo:us-west-2:123456789012:stream/cam/1"}'),
]))
out("local_control", "errors", reqs([
    ("create", b'{"StreamName":"bad name!"}'), ("describe", b'[]'), ("create", b'  '),
    ("endpoint", b'{"StreamARN":"arn:aws:kinesisvideo:us-west-2:1:stream/x"}'), ("list", b'{"NextToken":"zz"}'),
    ("create", b'{"StreamName":"cam","DataRetentionInHours":-1}'), ("describe", b'{"StreamName":"cam","StreamARN":"x"}'),
]))
print("seeds written to", HERE)
