// The local endpoint's page: streams, fragments with their ACK history, and a live player.
// The player is plain Media Source Extensions: it opens a LIVE HLS session, reads the media
// playlist every 500 ms, appends the init segment (EXT-X-MAP) and then each new media segment.
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

async function getJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
  return r.json();
}

async function getText(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
  return r.text();
}

async function getBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
  return r.arrayBuffer();
}

function time(t) {
  if (!t) return '';
  const ms = t.secs_since_epoch * 1000 + Math.floor(t.nanos_since_epoch / 1e6);
  return new Date(ms).toISOString().slice(11, 23);
}

function cell(row, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function table(headers) {
  const t = document.createElement('table');
  const head = t.insertRow();
  for (const h of headers) {
    const th = document.createElement('th');
    th.textContent = h;
    head.appendChild(th);
  }
  return t;
}

async function showStreams(selected) {
  const streams = await getJson('streams');
  const t = table(['name', 'status', 'retention (h)', 'media type', 'created', '']);
  for (const s of streams) {
    const row = t.insertRow();
    cell(row, s.name);
    cell(row, s.status);
    cell(row, String(s.data_retention_in_hours), 'num');
    cell(row, s.media_type || '');
    cell(row, time(s.creation_time));
    const td = document.createElement('td');
    const a = document.createElement('a');
    a.href = '?stream=' + encodeURIComponent(s.name);
    a.textContent = s.name === selected ? 'playing' : 'play';
    td.appendChild(a);
    row.appendChild(td);
  }
  $('streams').replaceChildren(streams.length ? t : document.createTextNode('no streams yet'));
  return streams;
}

async function showFragments(name) {
  const frags = await getJson('streams/' + encodeURIComponent(name) + '/fragments');
  const t = table(['#', 'fragment number', 'timecode', 'state', 'bytes', 'duration (ms)',
    'frames per track', 'ACKs (event @ time)']);
  for (const f of frags.slice(-50).reverse()) {
    const row = t.insertRow();
    cell(row, String(f.index), 'num');
    cell(row, f.fragment_number);
    cell(row, String(f.timecode), 'num');
    cell(row, f.state + (f.error_id ? ' ' + f.error_id : ''), f.state);
    cell(row, String(f.size), 'num');
    cell(row, String(f.duration_ms), 'num');
    cell(row, Object.entries(f.frames_per_track).map(([k, v]) => k + ':' + v).join(' '));
    cell(row, f.acks.map((a) => a.ack.EventType + (a.ack.ErrorId ? '(' + a.ack.ErrorId + ')' : '') +
      (a.sent ? '' : ' [dropped]') + ' @ ' + time(a.at)).join(', '));
  }
  $('fragments-stream').textContent = name + ' (' + frags.length + ', newest first)';
  $('fragments').replaceChildren(t);
}

// ---- the player -------------------------------------------------------------------------

function resolve(base, ref) {
  return new URL(ref, base).toString();
}

function waitUpdate(sb) {
  return new Promise((ok, fail) => {
    sb.addEventListener('updateend', ok, { once: true });
    sb.addEventListener('error', fail, { once: true });
  });
}

async function append(sb, data) {
  const done = waitUpdate(sb);
  sb.appendBuffer(data);
  await done;
}

function parseMedia(text, base) {
  // -> { sequence, segments: [{ seq, uri, map }], ended }
  const out = { sequence: 0, segments: [], ended: false };
  let seq = null;
  let map = null;
  for (const line of text.split('\n').map((l) => l.trim())) {
    if (line.startsWith('#EXT-X-MEDIA-SEQUENCE:')) {
      out.sequence = parseInt(line.split(':')[1], 10);
      seq = out.sequence;
    } else if (line.startsWith('#EXT-X-MAP:')) {
      map = resolve(base, /URI="([^"]+)"/.exec(line)[1]);
    } else if (line === '#EXT-X-ENDLIST') {
      out.ended = true;
    } else if (line && !line.startsWith('#')) {
      out.segments.push({ seq: seq++, uri: resolve(base, line), map });
    }
  }
  return out;
}

async function play(name) {
  const video = $('video');
  const status = (s) => { $('status').textContent = s; };
  $('player-stream').textContent = name;
  status('opening an HLS session');
  const session = await getJson('streams/' + encodeURIComponent(name) + '/hls?PlaybackMode=LIVE');
  const masterUrl = session.HLSStreamingSessionURL;
  const master = await getText(masterUrl);
  const codecs = (/CODECS="([^"]+)"/.exec(master) || [])[1] || 'avc1.42e01e';
  const mediaRef = master.split('\n').map((l) => l.trim()).find((l) => l && !l.startsWith('#'));
  const mediaUrl = resolve(masterUrl, mediaRef);
  const mime = 'video/mp4; codecs="' + codecs + '"';
  if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
    status('this browser cannot play ' + mime + ' with Media Source Extensions');
    return;
  }
  const ms = new MediaSource();
  video.src = URL.createObjectURL(ms);
  await new Promise((ok) => ms.addEventListener('sourceopen', ok, { once: true }));
  const sb = ms.addSourceBuffer(mime);
  let next = null;
  let map = null;
  let appended = 0;
  status('playing ' + mime);
  for (;;) {
    const list = parseMedia(await getText(mediaUrl), mediaUrl);
    if (next === null && list.segments.length) {
      // Start near the live edge: the last two segments.
      next = list.segments[Math.max(0, list.segments.length - 2)].seq;
    }
    for (const seg of list.segments) {
      if (next === null || seg.seq < next) continue;
      if (seg.map !== map) {
        // A new stored file (EXT-X-DISCONTINUITY): its timeline starts at 0 again, so it goes
        // after what is buffered.
        if (map !== null && sb.buffered.length) {
          sb.timestampOffset = sb.buffered.end(sb.buffered.length - 1);
        }
        await append(sb, await getBytes(seg.map));
        map = seg.map;
      }
      await append(sb, await getBytes(seg.uri));
      next = seg.seq + 1;
      appended++;
      $('appended').textContent = String(appended);
      if (sb.buffered.length && video.currentTime < sb.buffered.start(0)) {
        video.currentTime = sb.buffered.start(0);
      }
      video.play().catch(() => {});
    }
    if (list.ended) {
      ms.endOfStream();
      return;
    }
    await new Promise((ok) => setTimeout(ok, 500));
  }
}

// How far playback advanced (seconds of media played, seeks left out): the tests read it from
// the DOM or the title.
let played = 0;
let last = null;

function tick() {
  const t = $('video').currentTime;
  if (last !== null && t > last) played += t - last;
  last = t;
  $('current-time').textContent = t.toFixed(3);
  $('played').textContent = played.toFixed(3);
  document.title = 'currentTime=' + t.toFixed(3) + ' played=' + played.toFixed(3);
}

async function main() {
  setInterval(tick, 200);
  $('video').addEventListener('seeking', () => { last = null; });
  // ?hold=URL: an image from URL, which the page's load event waits for. A headless browser
  // dumps the DOM (`--dump-dom`, `--screenshot`) at the load event: the tests let the video play
  // for real seconds first by answering that request late.
  const hold = params.get('hold');
  if (hold) {
    const img = new Image(1, 1);
    img.src = hold;
    img.alt = '';
    document.body.appendChild(img);
  }
  let streams = [];
  try {
    streams = await showStreams(params.get('stream'));
  } catch (e) {
    $('streams').textContent = String(e);
  }
  const name = params.get('stream') || (streams[0] && streams[0].name);
  if (!name) return;
  const refresh = async () => {
    try {
      await showStreams(name);
      await showFragments(name);
    } catch (e) {
      $('fragments').textContent = String(e);
    }
  };
  await refresh();
  setInterval(refresh, 2000);
  for (;;) {
    try {
      await play(name);
      return;
    } catch (e) {
      $('status').textContent = 'error: ' + e.message + ' (retrying)';
      await new Promise((ok) => setTimeout(ok, 1000));
    }
  }
}

main();
