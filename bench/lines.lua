-- wrk script: POSTs the lines of the file in $BENCH_LINES (`path<TAB>body`), each of
-- the $BENCH_THREADS threads taking every n-th line from its own offset, so no two
-- requests share a line until the file runs out (then it wraps, and says so at the end).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  paths, bodies = {}, {}
  local prefix = os.getenv("BENCH_PREFIX") or ""
  for l in io.lines(os.getenv("BENCH_LINES")) do
    local tab = l:find("\t", 1, true)
    paths[#paths + 1] = prefix .. l:sub(1, tab - 1)
    bodies[#bodies + 1] = l:sub(tab + 1)
  end
  -- setup() ran in wrk's main Lua state; this thread's state only has what it set.
  step = tonumber(os.getenv("BENCH_THREADS") or "")
  if step == nil then error("BENCH_THREADS must be wrk's -t") end
  next_line = index + 1
  wrapped = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  if next_line > #paths then
    next_line = (next_line - 1) % #paths + 1
    wrapped = wrapped + 1
  end
  local i = next_line
  next_line = next_line + step
  return wrk.format(nil, paths[i], nil, bodies[i])
end

function done(summary, latency, requests)
  local wraps = 0
  for _, t in ipairs(threads) do wraps = wraps + (t:get("wrapped") or 0) end
  local l = latency
  io.write(string.format("RESULT rps=%.1f p50_us=%d p99_us=%d errors=%d non2xx=%d wraps=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), l:percentile(50), l:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, wraps, summary.requests))
end
