--[[
Unit tests for slurm_hooks/job_submit.lua, run against a stand-in for the `slurm`
table that slurmctld's job_submit/lua plugin provides.

    lua5.1 tests/lua/test_job_submit.lua [path/to/job_submit.lua]

Prints one "ok - NAME" or "not ok - NAME: why" line per case, then
"RESULT passed=N failed=M", and exits 1 when a case failed.
--]]

local script = arg[1] or "slurm_hooks/job_submit.lua"
local exit, clock = os.exit, os.clock

local SUCCESS, ERROR = 0, -1
local messages = {}

-- Like the plugin's own log_* wrappers: the arguments go through string.format.
local function recorder(channel)
    return function(fmt, ...)
        messages[#messages + 1] = { channel = channel, text = string.format(fmt, ...) }
    end
end

local function stand_in_slurm()
    return {
        SUCCESS = SUCCESS,
        ERROR = ERROR,
        log_user = recorder("user"),
        log_info = recorder("info"),
        log_error = recorder("error"),
    }
end

local passed, failed = 0, 0

local function test(name, fn)
    messages = {}
    local ok, err = pcall(fn)
    if ok then
        passed = passed + 1
        print("ok - " .. name)
    else
        failed = failed + 1
        print("not ok - " .. name .. ": " .. tostring(err))
    end
end

local function check(condition, why)
    if not condition then
        error(why, 2)
    end
end

local function eq(actual, expected, what)
    if actual ~= expected then
        error(string.format("%s: expected %s, got %s", what, tostring(expected), tostring(actual)), 2)
    end
end

local function contains(text, fragment)
    if not string.find(text, fragment, 1, true) then
        error(string.format("expected %q in %q", fragment, text), 2)
    end
end

local function on(channel)
    local found = {}
    for _, m in ipairs(messages) do
        if m.channel == channel then
            found[#found + 1] = m.text
        end
    end
    return found
end

local function count_keys(t)
    local n = 0
    for _ in pairs(t) do
        n = n + 1
    end
    return n
end

-------------------------------------------------------------------------------
-- Loading
-------------------------------------------------------------------------------

local globals_before = {}
for k in pairs(_G) do
    globals_before[k] = true
end

test("loads without touching `slurm` (it may not exist yet)", function()
    slurm = nil
    dofile(script)
end)

test("defines only the two hook functions as globals", function()
    local extra = {}
    for k in pairs(_G) do
        if not globals_before[k] then
            extra[#extra + 1] = tostring(k)
        end
    end
    table.sort(extra)
    eq(table.concat(extra, ","), "slurm_job_modify,slurm_job_submit", "new globals")
end)

if type(slurm_job_submit) ~= "function" then
    print("RESULT passed=" .. passed .. " failed=" .. (failed + 1) .. " (the script did not load)")
    exit(1)
end

slurm = stand_in_slurm()
-- The hooks run under slurmctld's locks: any file or process access must fail loudly here.
io, os = nil, nil

local function submit(comment, fields)
    messages = {}
    local job = { comment = comment }
    for k, v in pairs(fields or {}) do
        job[k] = v
    end
    return slurm_job_submit(job, {}, 1000), job
end

local function modify(comment, fields)
    messages = {}
    local job = { comment = comment }
    for k, v in pairs(fields or {}) do
        job[k] = v
    end
    return slurm_job_modify(job, { job_id = 4242 }, {}, 1000), job
end

-------------------------------------------------------------------------------
-- Accepted specs
-------------------------------------------------------------------------------

local accepted = {
    { "empty APS object means requeue", '{"APS": {}}' },
    { "explicit requeue with every key", '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10, "heartbeat_timeout": 600}}' },
    { "max_requeue_times 0", '{"APS": {"max_requeue_times": 0}}' },
    { "max_requeue_times -0 is zero", '{"APS": {"max_requeue_times": -0}}' },
    { "other top-level keys beside APS", '{"team": "nlp", "APS": {}, "x": [1, -2.5e3, 0.5E-2, null, true, false, {"y": "\\u00e9"}], "z": {}}' },
    { "whitespace everywhere", ' \r\n\t{ "APS" :\t{ "max_requeue_times" : 2 } }\n ' },
    { "unicode escape decoded before checking", '{"APS": {"auto_resume_mode": "re\\u0071ueue"}}' },
    { "every simple escape", '{"note": "\\" \\\\ \\/ \\b \\f \\n \\r \\t", "APS": {}}' },
    { "surrogate pair and raw UTF-8 elsewhere", '{"note": "\\ud83d\\ude00 é ✓", "APS": {}}' },
    { "DEL and high bytes are allowed unescaped", '{"note": "\127\200", "APS": {}}' },
    { "max_requeue_times at its bound", '{"APS": {"max_requeue_times": 10000}}' },
    { "heartbeat_timeout at its bound (30 days)", '{"APS": {"heartbeat_timeout": 2592000}}' },
}

for _, case in ipairs(accepted) do
    test("accepted, requeueable: " .. case[1], function()
        local rc, job = submit(case[2], { requeue = 0 })
        eq(rc, SUCCESS, "return code")
        eq(job.requeue, 1, "job_desc.requeue")
        eq(#messages, 0, "number of messages")
    end)
end

test("singleton with a singleton dependency: accepted quietly, requeue untouched", function()
    local rc, job = submit('{"APS": {"auto_resume_mode": "singleton_dependency"}}', { dependency = "singleton" })
    eq(rc, SUCCESS, "return code")
    eq(job.requeue, nil, "job_desc.requeue")
    eq(#messages, 0, "number of messages")
end)

test("singleton dependency among others counts", function()
    local rc = submit('{"APS": {"auto_resume_mode": "singleton_dependency"}}', { dependency = "afterok:12,singleton" })
    eq(rc, SUCCESS, "return code")
    eq(#messages, 0, "number of messages")
end)

for _, dependency in ipairs({ false, "afterok:12" }) do
    test("singleton without a singleton dependency (" .. tostring(dependency) .. "): accepted with a warning", function()
        local rc, job = submit('{"APS": {"auto_resume_mode": "singleton_dependency", "max_requeue_times": 3}}',
            { dependency = dependency or nil })
        eq(rc, SUCCESS, "return code")
        eq(job.requeue, nil, "job_desc.requeue")
        local user = on("user")
        eq(#messages, 1, "number of messages")
        eq(#user, 1, "user messages")
        contains(user[1], "AJR: warning:")
        contains(user[1], "--dependency=singleton")
    end)
end

-------------------------------------------------------------------------------
-- Comments that are not AJR's: untouched, silent
-------------------------------------------------------------------------------

local untouched = {
    { "no comment", nil },
    { "empty comment", "" },
    { "free text", "nightly run of the baseline" },
    { "JSON without APS", '{"team": "nlp"}' },
    { "lower-case aps is not a mention", '{"aps": {"auto_resume_mode": "bogus"}}' },
    { "object mentioning APS only in a value", '{"note": "try APS later"}' },
    { "object with a key that merely contains APS", '{"APS_old": 1}' },
}

for _, case in ipairs(untouched) do
    test("untouched: " .. case[1], function()
        local rc, job = submit(case[2])
        eq(rc, SUCCESS, "return code")
        eq(#messages, 0, "number of messages")
        eq(count_keys(job), case[2] == nil and 0 or 1, "fields of job_desc")
    end)
end

-------------------------------------------------------------------------------
-- Malformed JSON: refused, with the 1-based position and what was expected
-------------------------------------------------------------------------------

local malformed = {
    { "missing closing brace", '{"APS": {"auto_resume_mode": "requeue"}', 40, "expected ',' or '}' but found the end of the comment" },
    { "unquoted key", '{APS: {}}', 2, "expected '\"' to start a key but found 'A'" },
    { "single-quoted key", "{'APS': {}}", 2, "expected '\"' to start a key but found '''" },
    { "trailing comma in object", '{"APS": {},}', 12, "expected '\"' to start a key but found '}'" },
    { "trailing comma in array", '{"APS": {}, "x": [1,]}', 21, "expected a JSON value" },
    { "missing comma in array", '{"APS": {}, "x": [1 2]}', 21, "expected ',' or ']' but found '2'" },
    { "missing colon", '{"APS" {}}', 8, "expected ':' after the key but found '{'" },
    { "missing value", '{"APS": }', 9, "expected a JSON value (object, array, string, number, true, false or null) but found '}'" },
    { "unterminated string", '{"APS": {"auto_resume_mode": "requeue', 38, "expected '\"' to close the string opened at position 30 but found the end of the comment" },
    { "raw newline in a string", '{"APS": {"auto_resume_mode": "re\nqueue"}}', 33, "control characters must be escaped" },
    { "raw tab in a string", '{"APS\t": {}}', 6, "but found byte 0x09" },
    { "unknown escape", '{"APS": {"auto_resume_mode": "requeue\\x"}}', 39, "expected an escape character" },
    { "short unicode escape", '{"APS": {"auto_resume_mode": "\\u12G4"}}', 35, "expected 4 hexadecimal digits after '\\u' but found 'G'" },
    { "lone high surrogate", '{"APS": {"auto_resume_mode": "\\ud83d"}}', 37, "low surrogate after the high surrogate \\uD83D" },
    { "high surrogate then a non-surrogate", '{"APS": {"auto_resume_mode": "\\ud83d\\u0041"}}', 37, "expected a low surrogate \\uDC00-\\uDFFF after \\uD83D but found \\u0041" },
    { "lone low surrogate", '{"APS": {"auto_resume_mode": "\\ude00"}}', 31, "lone low surrogate \\uDE00" },
    { "leading zero", '{"APS": {"max_requeue_times": 01}}', 32, "after a leading 0 but found '1'" },
    { "fraction without digits", '{"APS": {"max_requeue_times": 1.}}', 33, "expected a digit after '.' but found '}'" },
    { "exponent without digits", '{"APS": {"max_requeue_times": 1e+}}', 34, "expected a digit in the exponent" },
    { "lone minus", '{"APS": {"max_requeue_times": -}}', 32, "expected a digit but found '}'" },
    { "plus sign", '{"APS": {"max_requeue_times": +1}}', 31, "expected a JSON value" },
    { "hexadecimal number", '{"APS": {"max_requeue_times": 0x10}}', 32, "expected ',' or '}' but found 'x'" },
    { "NaN", '{"APS": {"max_requeue_times": NaN}}', 31, "expected a JSON value" },
    { "misspelt literal", '{"APS": tru}', 9, "expected a JSON value" },
    { "capitalised literal", '{"x": True, "APS": {}}', 7, "expected a JSON value" },
    { "garbage after the object", '{"APS": {}} --requeue', 13, "expected the end of the comment after the JSON value but found '-'" },
    { "two objects", '{"APS": {}}{}', 12, "expected the end of the comment" },
    { "extra closing brace", '{"APS": {}}}', 12, "expected the end of the comment" },
    { "plain text mentioning APS", "please use APS", 1, "expected a JSON value" },
    { "duplicate APS key", '{"APS": {}, "APS": {"auto_resume_mode": "bogus"}}', 13, "expected each key once in an object but found \"APS\" again" },
    { "duplicate key inside APS", '{"APS": {"max_requeue_times": 1, "max_requeue_times": 2}}', 34, "\"max_requeue_times\" again" },
    { "nesting deeper than the cap", '{"APS": {}, "x": ' .. string.rep("[", 100) .. string.rep("]", 100) .. "}", 81, "expected at most 64 nested objects and arrays" },
    { "only whitespace after APS mention", '{"APS": ', 9, "but found the end of the comment" },
}

for _, case in ipairs(malformed) do
    local name, comment, position, fragment = case[1], case[2], case[3], case[4]
    test("malformed JSON refused: " .. name, function()
        local rc, job = submit(comment)
        eq(rc, ERROR, "return code")
        eq(job.requeue, nil, "job_desc.requeue")
        local user = on("user")
        eq(#messages, 1, "number of messages")
        eq(#user, 1, "user messages")
        contains(user[1], "AJR: --comment is not valid JSON near position " .. position .. ": ")
        contains(user[1], fragment)
        contains(user[1], '. Example: {"APS": {')
    end)
end

-------------------------------------------------------------------------------
-- Well-formed JSON, wrong spec: refused, naming the key and what it must be
-------------------------------------------------------------------------------

local wrong = {
    { "top level is an array", '["APS"]', "--comment mentions APS, so it must be a JSON object, but it is an array" },
    { "top level is a string", '"APS"', 'but it is "APS"' },
    { "APS is a string", '{"APS": "requeue"}', '"APS" in --comment must be a JSON object, got "requeue"' },
    { "APS is an array", '{"APS": []}', "must be a JSON object, got an array" },
    { "APS is null", '{"APS": null}', "must be a JSON object, got null" },
    { "APS is true", '{"APS": true}', "must be a JSON object, got true" },
    { "APS is a number", '{"APS": 3}', "must be a JSON object, got 3" },
    { "unknown mode", '{"APS": {"auto_resume_mode": "bogus"}}', 'APS.auto_resume_mode must be "requeue" or "singleton_dependency", got "bogus"' },
    { "mode in the wrong case", '{"APS": {"auto_resume_mode": "Requeue"}}', 'got "Requeue"' },
    { "mode as a number", '{"APS": {"auto_resume_mode": 1}}', "singleton_dependency\", got 1" },
    { "mode null", '{"APS": {"auto_resume_mode": null}}', "got null" },
    { "mode as an object", '{"APS": {"auto_resume_mode": {}}}', "got an object" },
    { "unknown key", '{"APS": {"max_requeue": 3}}', 'unknown key "max_requeue" in APS (known keys: auto_resume_mode, max_requeue_times, heartbeat_timeout)' },
    { "negative max_requeue_times", '{"APS": {"max_requeue_times": -1}}', "APS.max_requeue_times must be a non-negative integer such as 3, got -1" },
    { "max_requeue_times 3.0", '{"APS": {"max_requeue_times": 3.0}}', "non-negative integer such as 3, got 3.0" },
    { "max_requeue_times 3.5", '{"APS": {"max_requeue_times": 3.5}}', "got 3.5" },
    { "max_requeue_times with an exponent", '{"APS": {"max_requeue_times": 1e2}}', "got 1e2" },
    { "max_requeue_times as a string", '{"APS": {"max_requeue_times": "3"}}', 'got "3"' },
    { "max_requeue_times true", '{"APS": {"max_requeue_times": true}}', "got true" },
    { "max_requeue_times null", '{"APS": {"max_requeue_times": null}}', "got null" },
    { "max_requeue_times as an array", '{"APS": {"max_requeue_times": [3]}}', "got an array" },
    { "heartbeat_timeout 0", '{"APS": {"heartbeat_timeout": 0}}', "APS.heartbeat_timeout must be a positive integer (seconds) such as 600, got 0" },
    { "negative heartbeat_timeout", '{"APS": {"heartbeat_timeout": -60}}', "got -60" },
    { "fractional heartbeat_timeout", '{"APS": {"heartbeat_timeout": 1.5}}', "got 1.5" },
    { "heartbeat_timeout as a string", '{"APS": {"heartbeat_timeout": "60"}}', 'got "60"' },
    { "max_requeue_times above its bound", '{"APS": {"max_requeue_times": 10001}}', "APS.max_requeue_times must be at most 10000, got 10001" },
    { "max_requeue_times of 21 digits", '{"APS": {"max_requeue_times": 123456789012345678901}}', "APS.max_requeue_times must be at most 10000, got 123456789012345678901" },
    { "max_requeue_times that a double rounds (2^53 + 1)", '{"APS": {"max_requeue_times": 9007199254740993}}', "must be at most 10000, got 9007199254740993" },
    { "max_requeue_times of 400 digits", '{"APS": {"max_requeue_times": 1' .. string.rep("0", 399) .. '}}', "must be at most 10000, got 1" .. string.rep("0", 39) .. "..." },
    { "max_requeue_times of 21 digits below zero", '{"APS": {"max_requeue_times": -123456789012345678901}}', "APS.max_requeue_times must be a non-negative integer such as 3, got -123456789012345678901" },
    { "heartbeat_timeout above 30 days", '{"APS": {"heartbeat_timeout": 2592001}}', "APS.heartbeat_timeout must be at most 2592000 seconds (30 days), got 2592001" },
    { "heartbeat_timeout of 30 digits", '{"APS": {"heartbeat_timeout": 123456789012345678901234567890}}', "must be at most 2592000 seconds (30 days)" },
    { "a comment over 16 KiB", '{"APS": {}, "x": "' .. string.rep("y", 16365) .. '"}', "--comment holds 16385 bytes; AJR reads at most 16384 bytes of a comment that mentions APS" },
    { "a long value is shortened", '{"APS": {"auto_resume_mode": "' .. string.rep("x", 100) .. '"}}', 'got "' .. string.rep("x", 40) .. '..."' },
    { "a value with format directives reaches the user as written", '{"APS": {"auto_resume_mode": "100%d %s"}}', 'got "100%d %s"' },
    { "decoded unicode in the value", '{"APS": {"auto_resume_mode": "\\ud83d\\ude00 \\u00e9\\u20ac"}}', 'got "\240\159\152\128 \195\169\226\130\172"' },
}

for _, case in ipairs(wrong) do
    local name, comment, fragment = case[1], case[2], case[3]
    test("wrong spec refused: " .. name, function()
        local rc, job = submit(comment)
        eq(rc, ERROR, "return code")
        eq(job.requeue, nil, "job_desc.requeue")
        local user = on("user")
        eq(#messages, 1, "number of messages")
        eq(#user, 1, "user messages")
        contains(user[1], "AJR: ")
        contains(user[1], fragment)
        contains(user[1], '. Example: {"APS": {')
    end)
end

test("every problem inside APS is reported, in the order written", function()
    local rc = submit('{"APS": {"heartbeat_timeout": 0, "colour": "red", "auto_resume_mode": "bogus"}}')
    eq(rc, ERROR, "return code")
    local text = on("user")[1]
    local first = string.find(text, "heartbeat_timeout must", 1, true)
    local second = string.find(text, 'unknown key "colour"', 1, true)
    local third = string.find(text, "auto_resume_mode must", 1, true)
    check(first and second and third and first < second and second < third, "problems out of order: " .. text)
end)

test("the example shown to users is itself accepted", function()
    submit('{"APS": {"auto_resume_mode": "bogus"}}')
    local example = string.match(on("user")[1], "Example: (.*)$")
    check(example, "no example in the message")
    local rc, job = submit(example)
    eq(rc, SUCCESS, "return code for the example")
    eq(job.requeue, 1, "job_desc.requeue for the example")
end)

-------------------------------------------------------------------------------
-- Hostile comments: what reaches the user and slurmctld's log is bounded and printable
-------------------------------------------------------------------------------

local function printable(text)
    return not string.find(text, "[%z\1-\31\127]") and not string.find(text, "\194[\128-\159]")
end

for _, case in ipairs({
    { "control characters in a value", '{"APS": {"auto_resume_mode": "x\\nFAKE LINE\\u001b[31m\\u0000\\u0085"}}', 'got "x\\u000AFAKE LINE\\u001B[31m\\u0000\\u0085"' },
    { "control characters in a key", '{"APS": {"a\\r\\nb": 1}}', 'unknown key "a\\u000D\\u000Ab"' },
    { "control characters in a duplicate key", '{"APS": {"a\\nb": 1, "a\\nb": 2}}', '"a\\u000Ab" again' },
}) do
    test("hostile text is escaped in messages: " .. case[1], function()
        local rc = submit(case[2])
        eq(rc, ERROR, "return code")
        local user = on("user")
        eq(#user, 1, "user messages")
        check(printable(user[1]), "a control character reached the message: " .. user[1])
        contains(user[1], case[3])
    end)
    test("hostile text is escaped in slurmctld's log: " .. case[1], function()
        local rc = modify(case[2])
        eq(rc, ERROR, "return code")
        local info = on("info")
        eq(#info, 1, "info messages")
        check(printable(info[1]), "a control character reached the log: " .. info[1])
    end)
end

test("a thousand problems make a message of five and a count", function()
    local keys = {}
    for n = 1, 1000 do
        keys[#keys + 1] = '"k' .. n .. '": 1'
    end
    local rc = submit('{"APS": {' .. table.concat(keys, ", ") .. "}}")
    eq(rc, ERROR, "return code")
    local text = on("user")[1]
    contains(text, 'unknown key "k5" in APS')
    contains(text, "; and 995 more problems")
    check(not string.find(text, '"k6"', 1, true), "more than five problems shown")
    check(#text < 1200, "message of " .. #text .. " bytes")
end)

test("a huge comment without APS passes untouched", function()
    local rc = submit(string.rep("z", 1000000))
    eq(rc, SUCCESS, "return code")
    eq(#messages, 0, "number of messages")
end)

-- Under slurmctld's locks: the worst 16 KiB comments must still be checked in a few milliseconds.
-- (string.rep takes no separator in Lua 5.1.)
local function joined(n, item)
    local items = {}
    for i = 1, n do
        items[i] = item(i)
    end
    return table.concat(items, ",")
end

local worst = {
    { "deep nesting, repeated", '{"APS": {}, "x": [' .. joined(130, function()
        return string.rep("[", 60) .. string.rep("]", 60)
    end) .. "]}" },
    { "many keys", '{"APS": {}, ' .. joined(1000, function(i)
        return '"k' .. i .. '": [1, 2]'
    end) .. "}" },
    { "escapes", '{"APS": {}, "x": "' .. string.rep("\\u00e9\\n", 2000) .. '"}' },
    { "numbers", '{"APS": {}, "x": [' .. joined(1600, function()
        return "-1.5e+300"
    end) .. "]}" },
    { "many problems", '{"APS": {' .. joined(1500, function(i)
        return '"k' .. i .. '": 1'
    end) .. "}}" },
}
for _, case in ipairs(worst) do
    test("bounded work: " .. case[1] .. " (" .. #case[2] .. " bytes)", function()
        check(#case[2] <= 16384, "the case is larger than the comment bound: " .. #case[2])
        local started = clock()
        for _ = 1, 5 do
            submit(case[2])
        end
        local each = (clock() - started) / 5
        check(each < 0.05, string.format("%.1f ms for one check", each * 1000))
        print(string.format("# %s: %.2f ms", case[1], each * 1000))
    end)
end

-------------------------------------------------------------------------------
-- Fail open: an internal error never blocks a job
-------------------------------------------------------------------------------

local function exploding(field)
    return setmetatable({}, {
        __index = function(_, key)
            if key == field then
                error("boom reading " .. key)
            end
        end,
        __newindex = function(_, key)
            error("boom writing " .. key)
        end,
    })
end

test("internal error: reading the comment raises", function()
    messages = {}
    local rc = slurm_job_submit(exploding("comment"), {}, 1000)
    eq(rc, SUCCESS, "return code")
    eq(#on("user"), 0, "user messages")
    local errors = on("error")
    eq(#errors, 1, "error messages")
    contains(errors[1], "internal error, job let through unchecked")
    contains(errors[1], "boom reading comment")
end)

test("internal error: setting requeue raises", function()
    messages = {}
    local job = exploding("nothing")
    rawset(job, "comment", '{"APS": {}}')
    eq(slurm_job_submit(job, {}, 1000), SUCCESS, "return code")
    contains(on("error")[1] or "", "boom writing requeue")
end)

test("internal error: job_desc is nil", function()
    messages = {}
    eq(slurm_job_submit(nil, {}, 1000), SUCCESS, "return code")
    eq(#on("error"), 1, "error messages")
end)

test("internal error: slurm.log_user raises on a bad spec", function()
    slurm.log_user = function()
        error("log_user is broken")
    end
    local ok, rc = pcall(submit, '{"APS": {"auto_resume_mode": "bogus"}}')
    slurm.log_user = recorder("user")
    check(ok, "the hook raised: " .. tostring(rc))
    eq(rc, SUCCESS, "return code")
    contains(on("error")[1] or "", "log_user is broken")
end)

test("internal error: even slurm.log_error raising does not escape", function()
    slurm.log_error = function()
        error("log_error is broken too")
    end
    local ok, rc = pcall(slurm_job_submit, exploding("comment"), {}, 1000)
    slurm.log_error = recorder("error")
    check(ok, "the hook raised: " .. tostring(rc))
    eq(rc, SUCCESS, "return code")
end)

test("internal error in job_modify fails open too", function()
    messages = {}
    eq(slurm_job_modify(exploding("comment"), { job_id = 1 }, {}, 0), SUCCESS, "return code")
    eq(#on("error"), 1, "error messages")
end)

-------------------------------------------------------------------------------
-- slurm_job_modify: the same checks when the comment changes
-------------------------------------------------------------------------------

test("modify without a new comment: untouched", function()
    local rc, job = modify(nil, { time_limit = 60 })
    eq(rc, SUCCESS, "return code")
    eq(job.requeue, nil, "job_desc.requeue")
    eq(#messages, 0, "number of messages")
end)

test("modify to a comment without APS: untouched", function()
    local rc, job = modify("new note")
    eq(rc, SUCCESS, "return code")
    eq(job.requeue, nil, "job_desc.requeue")
    eq(#messages, 0, "number of messages")
end)

test("modify to a valid requeue spec: accepted, requeueable", function()
    local rc, job = modify('{"APS": {"max_requeue_times": 2}}')
    eq(rc, SUCCESS, "return code")
    eq(job.requeue, 1, "job_desc.requeue")
    eq(#messages, 0, "number of messages")
end)

test("modify to a valid singleton spec: accepted, requeue untouched", function()
    local rc, job = modify('{"APS": {"auto_resume_mode": "singleton_dependency"}}')
    eq(rc, SUCCESS, "return code")
    eq(job.requeue, nil, "job_desc.requeue")
end)

for _, comment in ipairs({ '{"APS": {"auto_resume_mode": "bogus"}}', '{"APS": {', '{"APS": {"max_requeue_times": 3.5}}' }) do
    test("modify to a broken spec is refused, the reason logged, not sent to the user: " .. comment, function()
        local rc, job = modify(comment)
        eq(rc, ERROR, "return code")
        eq(job.requeue, nil, "job_desc.requeue")
        eq(#on("user"), 0, "user messages (22.05 discards them in job_modify)")
        local info = on("info")
        eq(#info, 1, "info messages")
        contains(info[1], "AJR: refused Comment update of job 4242: AJR: ")
        contains(info[1], "Example: ")
    end)
end

print(string.format("RESULT passed=%d failed=%d interpreter=%s", passed, failed, _VERSION))
exit(failed == 0 and 0 or 1)
