-- Replays pre-generated raw HTTP requests, one file per wrk thread, and records the
-- status-code histogram and the body markers the benchmark verifies afterwards.
--
--   wrk -t1 -c32 -d20s --latency -s loadtest/wrk/replay.lua http://127.0.0.1:PORT/ \
--       -- REQUESTS_PREFIX RESULT_JSON [collect]
--
-- REQUESTS_PREFIX.<n> (n = 1..threads) holds records "<byte length>\n<raw request>".
-- Requests are sent in order; a thread that runs out starts over and counts a wrap
-- (the benchmark treats a wrap in a measured ingest phase as an error: the bodies
-- would no longer be unique). With "collect", 202 bodies are scanned for the
-- incident id and the duplicate flag (the ceiling's replies are scanned the same way,
-- so both sides pay for the same client work).

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
  table.insert(threads, thread)
end

local reqs = {}
local n = 0
local i = 0
wraps = 0
sent = 0
statuses = {}
ids = {}
nids = 0
duplicates = 0
out_path = nil

function init(args)
  local prefix = args[1]
  out_path = args[2]
  collect = args[3] == "collect"
  local f = assert(io.open(prefix .. "." .. thread_no, "rb"))
  while true do
    local len = f:read("*l")
    if not len then break end
    n = n + 1
    reqs[n] = f:read(tonumber(len))
  end
  f:close()
  assert(n > 0, "no requests in " .. prefix .. "." .. thread_no)
end

function request()
  i = i + 1
  if i > n then
    i = 1
    wraps = wraps + 1
  end
  sent = sent + 1
  return reqs[i]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 202 then
    local id = string.match(body, '"incident_id":"([%x%-]+)"')
    if id then
      nids = nids + 1
      ids[nids] = id
    end
    if string.find(body, '"duplicate":true', 1, true) then
      duplicates = duplicates + 1
    end
  end
end

local function quote(s)
  return '"' .. tostring(s) .. '"'
end

function done(summary, latency, requests)
  local hist, all_ids = {}, {}
  local total_wraps, total_sent, total_dups = 0, 0, 0
  for _, t in ipairs(threads) do
    for code, count in pairs(t:get("statuses")) do
      hist[code] = (hist[code] or 0) + count
    end
    total_wraps = total_wraps + t:get("wraps")
    total_sent = total_sent + t:get("sent")
    total_dups = total_dups + t:get("duplicates")
    if t:get("collect") then
      for _, id in ipairs(t:get("ids")) do
        table.insert(all_ids, quote(id))
      end
    end
  end
  local codes = {}
  for code, count in pairs(hist) do
    table.insert(codes, quote(code) .. ":" .. count)
  end
  local pcts = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    table.insert(pcts, quote(p) .. ":" .. latency:percentile(p))
  end
  local e = summary.errors
  local out = assert(io.open(threads[1]:get("out_path"), "w"))
  out:write("{",
    '"duration_us":', summary.duration, ",",
    '"requests":', summary.requests, ",",
    '"sent":', total_sent, ",",
    '"wraps":', total_wraps, ",",
    '"duplicates":', total_dups, ",",
    '"errors":{"connect":', e.connect, ',"read":', e.read, ',"write":', e.write,
    ',"status":', e.status, ',"timeout":', e.timeout, "},",
    '"latency_us":{"mean":', latency.mean, ',"max":', latency.max, ",",
    table.concat(pcts, ","), "},",
    '"statuses":{', table.concat(codes, ","), "},",
    '"incident_ids":[', table.concat(all_ids, ","), "]}\n")
  out:close()
end
