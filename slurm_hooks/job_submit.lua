--[[
AJR job_submit.lua: check the AJR spec in a job's --comment when the job is
submitted or its comment is changed, so a job cannot opt in to automatic
recovery with a spec the agent would ignore.

slurmctld runs this under its locks, so it does no I/O and starts no process.
Debian's plugin links Lua 5.1; the code also runs on Lua 5.3/5.4. It touches
`slurm` only when called: the plugin builds that table before running this
file, but tests may not.

Positions in JSON error messages are 1-based byte offsets into the comment.
--]]

local EXAMPLE = '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}'
local KNOWN_KEYS = "auto_resume_mode, max_requeue_times, heartbeat_timeout"
-- The agent's bounds (ajr_agent/spec.py): beyond them a number means nothing to it.
local MAX_REQUEUE_TIMES = 10000
local MAX_HEARTBEAT_TIMEOUT = 30 * 24 * 3600
-- This runs under slurmctld's locks: the comment's size bounds the work (the worst
-- 16 KiB take about 10 ms on Lua 5.1), and the agent refuses the same.
local MAX_COMMENT_BYTES = 16384
-- The parser recurses once per nesting level. Lua's call depth is finite, and
-- running out of it would be an internal error, which lets the job through unchecked.
local MAX_DEPTH = 64
local SHOWN_BYTES = 40
-- Every problem of a spec is found, but a message names only the first few.
local SHOWN_PROBLEMS = 5

local find, sub, byte, match = string.find, string.sub, string.byte, string.match
local floor = math.floor

local function escape_control(c)
    return string.format("\\u%04X", byte(c, #c))
end

-- User text as a message shows it: cut, and its control characters (C0, DEL, C1) spelt
-- as JSON escapes, so that it can neither break slurmctld's log into forged lines nor
-- send escape sequences to the user's terminal.
local function shorten(text)
    if #text > SHOWN_BYTES then
        -- Cutting inside a UTF-8 sequence would print garbage: drop the partial character.
        text = (string.gsub(sub(text, 1, SHOWN_BYTES), "[\192-\255][\128-\191]*$", "")) .. "..."
    end
    return (string.gsub(string.gsub(text, "[%z\1-\31\127]", escape_control), "\194[\128-\159]", escape_control))
end

-------------------------------------------------------------------------------
-- A strict JSON parser (RFC 8259) that keeps what validation needs: each value
-- is a node {kind, value, raw, integer, keys}. Objects keep their key order so
-- that problems are reported in the order the user wrote them.
-------------------------------------------------------------------------------

local ParseError = {}

local function fail(pos, message)
    error(setmetatable({ pos = pos, message = message }, ParseError), 0)
end

local function found(text, pos)
    if pos > #text then
        return "the end of the comment"
    end
    local b = byte(text, pos)
    if b >= 32 and b < 127 then
        return "'" .. sub(text, pos, pos) .. "'"
    end
    return string.format("byte 0x%02X", b)
end

local function expect(text, pos, what)
    fail(pos, "expected " .. what .. " but found " .. found(text, pos))
end

local function skip_space(text, pos)
    return find(text, "[^ \t\r\n]", pos) or #text + 1
end

local function utf8_char(cp)
    if cp < 0x80 then
        return string.char(cp)
    elseif cp < 0x800 then
        return string.char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40)
    elseif cp < 0x10000 then
        return string.char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
    end
    return string.char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
        0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

-- pos is at the 'u' of "\uXXXX"; returns the code unit and the position after it.
local function hex4(text, pos)
    local digits = match(text, "^%x%x%x%x", pos + 1)
    if not digits then
        expect(text, pos + 1 + #match(text, "^%x*", pos + 1), "4 hexadecimal digits after '\\u'")
    end
    return tonumber(digits, 16), pos + 5
end

-- pos is at the 'u' of "\uXXXX"; JSON spells characters beyond U+FFFF as a UTF-16
-- surrogate pair, and a lone surrogate is no character at all.
local function unicode_escape(text, pos)
    local unit, after = hex4(text, pos)
    if unit >= 0xDC00 and unit <= 0xDFFF then
        fail(pos - 1, string.format("expected a character but found a lone low surrogate \\u%04X", unit))
    end
    if unit < 0xD800 or unit > 0xDBFF then
        return utf8_char(unit), after
    end
    if sub(text, after, after + 1) ~= "\\u" then
        expect(text, after, string.format("'\\u' and a low surrogate after the high surrogate \\u%04X", unit))
    end
    local low, next_pos = hex4(text, after + 1)
    if low < 0xDC00 or low > 0xDFFF then
        fail(after, string.format("expected a low surrogate \\uDC00-\\uDFFF after \\u%04X but found \\u%04X",
            unit, low))
    end
    return utf8_char(0x10000 + (unit - 0xD800) * 0x400 + (low - 0xDC00)), next_pos
end

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

-- pos is at the opening quote; returns the decoded string and the position after the closing quote.
local function parse_string(text, pos)
    local parts = {}
    local i = pos + 1
    while true do
        local j = find(text, '[%z\1-\31"\\]', i)
        if not j then
            expect(text, #text + 1, "'\"' to close the string opened at position " .. pos)
        end
        parts[#parts + 1] = sub(text, i, j - 1)
        local c = sub(text, j, j)
        if c == '"' then
            return table.concat(parts), j + 1
        elseif c ~= "\\" then
            expect(text, j, "'\"' or a printable character (control characters must be escaped, e.g. \\n)")
        end
        local escape = sub(text, j + 1, j + 1)
        if escape == "u" then
            parts[#parts + 1], i = unicode_escape(text, j + 1)
        elseif ESCAPES[escape] then
            parts[#parts + 1], i = ESCAPES[escape], j + 2
        else
            expect(text, j + 1, "an escape character (one of \" \\ / b f n r t u) after '\\'")
        end
    end
end

local function parse_number(text, pos)
    local i = pos
    if sub(text, i, i) == "-" then
        i = i + 1
    end
    local digits = match(text, "^%d+", i)
    if not digits then
        expect(text, i, "a digit")
    end
    if #digits > 1 and sub(digits, 1, 1) == "0" then
        expect(text, i + 1, "'.', 'e' or the end of the number after a leading 0")
    end
    i = i + #digits
    local integer = true
    if sub(text, i, i) == "." then
        local fraction = match(text, "^%d+", i + 1)
        if not fraction then
            expect(text, i + 1, "a digit after '.'")
        end
        i, integer = i + 1 + #fraction, false
    end
    if find(sub(text, i, i), "^[eE]") then
        i = i + 1
        if find(sub(text, i, i), "^[+-]") then
            i = i + 1
        end
        local exponent = match(text, "^%d+", i)
        if not exponent then
            expect(text, i, "a digit in the exponent")
        end
        i, integer = i + #exponent, false
    end
    local raw = sub(text, pos, i - 1)
    return { kind = "number", value = tonumber(raw), raw = raw, integer = integer }, i
end

local LITERALS = {
    { word = "true", kind = "boolean", value = true },
    { word = "false", kind = "boolean", value = false },
    { word = "null", kind = "null" },
}

local parse_value

local function check_depth(text, pos, depth)
    if depth > MAX_DEPTH then
        fail(pos, "expected at most " .. MAX_DEPTH .. " nested objects and arrays but found " .. found(text, pos))
    end
end

local function parse_object(text, pos, depth)
    check_depth(text, pos, depth)
    local node = { kind = "object", value = {}, keys = {} }
    pos = skip_space(text, pos + 1)
    if sub(text, pos, pos) == "}" then
        return node, pos + 1
    end
    while true do
        if sub(text, pos, pos) ~= '"' then
            expect(text, pos, "'\"' to start a key")
        end
        local key, after = parse_string(text, pos)
        if node.value[key] then
            fail(pos, 'expected each key once in an object but found "' .. shorten(key) .. '" again')
        end
        pos = skip_space(text, after)
        if sub(text, pos, pos) ~= ":" then
            expect(text, pos, "':' after the key")
        end
        node.value[key], pos = parse_value(text, pos + 1, depth)
        node.keys[#node.keys + 1] = key
        pos = skip_space(text, pos)
        local c = sub(text, pos, pos)
        if c == "}" then
            return node, pos + 1
        elseif c ~= "," then
            expect(text, pos, "',' or '}'")
        end
        pos = skip_space(text, pos + 1)
    end
end

local function parse_array(text, pos, depth)
    check_depth(text, pos, depth)
    local node = { kind = "array", value = {} }
    pos = skip_space(text, pos + 1)
    if sub(text, pos, pos) == "]" then
        return node, pos + 1
    end
    while true do
        node.value[#node.value + 1], pos = parse_value(text, pos, depth)
        pos = skip_space(text, pos)
        local c = sub(text, pos, pos)
        if c == "]" then
            return node, pos + 1
        elseif c ~= "," then
            expect(text, pos, "',' or ']'")
        end
        pos = pos + 1
    end
end

parse_value = function(text, pos, depth)
    pos = skip_space(text, pos)
    local c = sub(text, pos, pos)
    if c == "{" then
        return parse_object(text, pos, depth + 1)
    elseif c == "[" then
        return parse_array(text, pos, depth + 1)
    elseif c == '"' then
        local value, after = parse_string(text, pos)
        return { kind = "string", value = value, raw = sub(text, pos, after - 1) }, after
    elseif c == "-" or find(c, "^%d") then
        return parse_number(text, pos)
    end
    for _, literal in ipairs(LITERALS) do
        if sub(text, pos, pos + #literal.word - 1) == literal.word then
            return { kind = literal.kind, value = literal.value, raw = literal.word }, pos + #literal.word
        end
    end
    expect(text, pos, "a JSON value (object, array, string, number, true, false or null)")
end

-- Returns the root node, or nil and a ParseError {pos, message}. Any other error
-- is a bug in this file and propagates to the fail-open handler.
local function parse_json(text)
    local ok, result = pcall(function()
        local root, pos = parse_value(text, 1, 0)
        pos = skip_space(text, pos)
        if pos <= #text then
            expect(text, pos, "the end of the comment after the JSON value")
        end
        return root
    end)
    if ok then
        return result
    elseif getmetatable(result) == ParseError then
        return nil, result
    end
    error(result, 0)
end

-------------------------------------------------------------------------------
-- The AJR spec
-------------------------------------------------------------------------------

local KINDS = { object = "an object", array = "an array" }

local function describe(node)
    if KINDS[node.kind] then
        return KINDS[node.kind]
    elseif node.kind == "string" then
        return '"' .. shorten(node.value) .. '"'
    end
    return shorten(node.raw)
end

-- nil when the node is an integer within [minimum, maximum]; else "large" when it is an
-- integer above maximum, "invalid" otherwise. Lua 5.1 numbers are doubles, exact only up
-- to 2^53, so an integer's size is judged by the digits of its JSON text before any
-- arithmetic (a JSON integer has no leading zeros: more digits is larger).
local function integer_problem(node, minimum, maximum)
    if node.kind ~= "number" or not node.integer then
        return "invalid"
    end
    local sign, digits = match(node.raw, "^(-?)(%d+)$")
    if #digits > #tostring(maximum) then
        return sign == "-" and "invalid" or "large"
    end
    local value = tonumber(node.raw)
    if value < minimum then
        return "invalid"
    end
    return value > maximum and "large" or nil
end

local CHECKS = {
    auto_resume_mode = function(node)
        if node.kind == "string" and (node.value == "requeue" or node.value == "singleton_dependency") then
            return nil
        end
        return 'APS.auto_resume_mode must be "requeue" or "singleton_dependency", got ' .. describe(node)
    end,
    max_requeue_times = function(node)
        local problem = integer_problem(node, 0, MAX_REQUEUE_TIMES)
        if problem == "large" then
            return "APS.max_requeue_times must be at most " .. MAX_REQUEUE_TIMES .. ", got " .. describe(node)
        elseif problem then
            return "APS.max_requeue_times must be a non-negative integer such as 3, got " .. describe(node)
        end
    end,
    heartbeat_timeout = function(node)
        local problem = integer_problem(node, 1, MAX_HEARTBEAT_TIMEOUT)
        if problem == "large" then
            return "APS.heartbeat_timeout must be at most " .. MAX_HEARTBEAT_TIMEOUT .. " seconds (30 days), got "
                .. describe(node)
        elseif problem then
            return "APS.heartbeat_timeout must be a positive integer (seconds) such as 600, got " .. describe(node)
        end
    end,
}

--[[
What a comment means for AJR:
  nil                      not an AJR job (no "APS" in it, or an object without an APS key,
                           which the agent ignores as well)
  {problem = text}         a broken spec; text says what is wrong, without prefix or example
  {mode = "requeue" | "singleton_dependency"}
--]]
local function evaluate(comment)
    if type(comment) ~= "string" or not find(comment, "APS", 1, true) then
        return nil
    end
    if #comment > MAX_COMMENT_BYTES then
        return { problem = "--comment holds " .. #comment .. " bytes; AJR reads at most " .. MAX_COMMENT_BYTES
            .. " bytes of a comment that mentions APS" }
    end
    local root, err = parse_json(comment)
    if not root then
        return { problem = "--comment is not valid JSON near position " .. err.pos .. ": " .. err.message }
    end
    if root.kind ~= "object" then
        return { problem = "--comment mentions APS, so it must be a JSON object, but it is " .. describe(root) }
    end
    local aps = root.value.APS
    if not aps then
        return nil
    end
    if aps.kind ~= "object" then
        return { problem = '"APS" in --comment must be a JSON object, got ' .. describe(aps) }
    end
    local problems = {}
    for _, key in ipairs(aps.keys) do
        local check = CHECKS[key]
        if not check then
            problems[#problems + 1] = 'unknown key "' .. shorten(key) .. '" in APS (known keys: ' .. KNOWN_KEYS .. ")"
        else
            problems[#problems + 1] = check(aps.value[key])
        end
    end
    if #problems > SHOWN_PROBLEMS then
        local more = #problems - SHOWN_PROBLEMS
        for i = #problems, SHOWN_PROBLEMS + 1, -1 do
            problems[i] = nil
        end
        problems[#problems + 1] = "and " .. more .. " more problems"
    end
    if #problems > 0 then
        return { problem = "invalid APS spec in --comment: " .. table.concat(problems, "; ") }
    end
    local mode = aps.value.auto_resume_mode
    return { mode = mode and mode.value or "requeue" }
end

local function user_message(problem)
    return "AJR: " .. problem .. ". Example: " .. EXAMPLE
end

local SINGLETON_WARNING = 'AJR: warning: auto_resume_mode "singleton_dependency" needs --dependency=singleton '
    .. "(every job of the chain with the same --job-name): without it there is no next job to release "
    .. "after a failure. The job is accepted."

-- slurm.log_* run their arguments through string.format: user text must never be the format.
local function log(fn, text)
    fn("%s", text)
end

local function submit(job_desc)
    local verdict = evaluate(job_desc.comment)
    if not verdict then
        return slurm.SUCCESS
    elseif verdict.problem then
        log(slurm.log_user, user_message(verdict.problem))
        return slurm.ERROR
    elseif verdict.mode == "requeue" then
        -- The agent can only requeue a job Slurm considers requeueable, whatever --no-requeue said.
        job_desc.requeue = 1
    elseif not find(job_desc.dependency or "", "singleton", 1, true) then
        log(slurm.log_user, SINGLETON_WARNING)
    end
    return slurm.SUCCESS
end

local function modify(job_desc, job_rec)
    local verdict = evaluate(job_desc.comment)
    if not verdict then
        return slurm.SUCCESS
    elseif verdict.problem then
        -- Slurm 22.05 discards slurm.log_user during job_modify (and logs an error saying so):
        -- the reason can only go to the controller's log.
        log(slurm.log_info, "AJR: refused Comment update of job " .. tostring(job_rec and job_rec.job_id)
            .. ": " .. user_message(verdict.problem))
        return slurm.ERROR
    elseif verdict.mode == "requeue" then
        job_desc.requeue = 1
    end
    return slurm.SUCCESS
end

-- Fail open: a bug here must never stop jobs from being submitted or updated.
local function guarded(hook, work, ...)
    local ok, rc = pcall(work, ...)
    if ok then
        return rc
    end
    pcall(function()
        log(slurm.log_error, "AJR " .. hook .. ": internal error, job let through unchecked: " .. tostring(rc))
    end)
    return slurm.SUCCESS
end

function slurm_job_submit(job_desc, part_list, submit_uid)
    return guarded("slurm_job_submit", submit, job_desc)
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return guarded("slurm_job_modify", modify, job_desc, job_rec)
end
