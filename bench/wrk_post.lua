-- wrk script for proxybench: POSTs a 20-byte JSON body, cycling round robin over the request paths
-- listed one per line in the file named by the first script argument, and prints a JSON summary.
-- Every closed-loop run uses this script, so the cost of building requests is the same for all paths.
local body = '{"data":[1,2,3,4,5]}'
local prepared = {}
local next_index = 1

function init(args)
  local file = assert(io.open(args[1], "r"))
  for path in file:lines() do
    if path ~= "" then
      local headers = { ["Content-Type"] = "application/json", ["Host"] = wrk.host }
      prepared[#prepared + 1] = wrk.format("POST", path, headers, body)
    end
  end
  file:close()
  assert(#prepared > 0, "no request paths in " .. args[1])
end

function request()
  local r = prepared[next_index]
  next_index = next_index % #prepared + 1
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"latency_mean_us":%.1f,"latency_p50_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(99), latency.max))
end
