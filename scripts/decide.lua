-- wrk script for scripts/bench-decide: POST /v1/decide with a new RequestEvent each time, spread
-- over 10 000 users of the pro tier (600 a minute each: a 20 s run at 50 000/s stays under it).
local counter = 0
local thread_id = 0
local ts = os.date("!%Y-%m-%dT%H:%M:%SZ")

function setup(thread)
  thread_id = thread_id + 1
  thread:set("thread_id", thread_id)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local body = string.format('{"id":"b-%d-%d","ts":"%s","user_id":"u%d","tier":"pro","request_type":"standard"}',
    thread_id, counter, ts, counter % 10000)
  return wrk.format(nil, nil, nil, body)
end
