-- seldon.lua: request-side glue for the meshserve (Seldon Core 2 style) Envoy data plane.
--
-- 1. Scope key: HCM scoped routes select the scope from the `seldon-model` header.
--    Plain REST/gRPC clients often send only a path, so when neither `seldon-model`
--    nor `x-seldon-route` is present we derive it from the path:
--      /v2/models/<name>[/...]    -> <name>
--      /v2/pipelines/<name>[/...] -> <name>.pipeline
--    Envoy re-selects the scope (not only the route) when the route cache is cleared,
--    so the new header takes effect for routing.
-- 2. gRPC model name: the upstream server knows the model by its internal name
--    (e.g. "iris_1"), which the control plane puts in the selected route's metadata
--    (filter_metadata["envoy.filters.http.lua"].internal_model). REST is handled by the
--    route's regex_rewrite; gRPC carries the name inside the protobuf body, so for
--    ModelInfer/ModelMetadata/ModelReady we rewrite top-level field 1 (model_name/name)
--    and drop field 2 (model_version/version) in the gRPC frame.

local byte, char, sub, concat, floor = string.byte, string.char, string.sub, table.concat, math.floor

local GRPC_METHODS = {
  ["/inference.GRPCInferenceService/ModelInfer"] = true,
  ["/inference.GRPCInferenceService/ModelMetadata"] = true,
  ["/inference.GRPCInferenceService/ModelReady"] = true,
}

local function model_from_path(path)
  local name = path:match("^/v2/models/([^/?#]+)")
  if name then return name end
  name = path:match("^/v2/pipelines/([^/?#]+)")
  if name then return name .. ".pipeline" end
  return nil
end

-- Varints are decoded with float arithmetic (LuaJIT `bit` is 32-bit); exact for
-- values < 2^53, and for larger wire-type-0 values we only need the byte position.
local function read_varint(s, pos, last)
  local value, mul = 0, 1
  while pos <= last do
    local b = byte(s, pos)
    pos = pos + 1
    if b < 128 then return value + b * mul, pos end
    value = value + (b - 128) * mul
    mul = mul * 128
    if mul > 2 ^ 70 then return nil end -- more than 10 bytes: malformed
  end
  return nil
end

local function encode_varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = char(n % 128 + 128)
    n = floor(n / 128)
  end
  out[#out + 1] = char(n)
  return concat(out)
end

-- Rewrites protobuf message s[first..last]: field 1 := name (emitted first), field 2
-- removed, every other top-level field copied verbatim in order. Returns nil when the
-- message does not parse, in which case the caller forwards the body untouched.
local function rewrite_message(s, first, last, name)
  local out = { "\10", encode_varint(#name), name } -- 0x0A = field 1, wire type 2
  local pos, keep_from = first, first
  while pos <= last do
    local field_start = pos
    local key
    key, pos = read_varint(s, pos, last)
    if not key then return nil end
    local field, wire = floor(key / 8), key % 8
    if wire == 0 then
      local v
      v, pos = read_varint(s, pos, last)
      if not v then return nil end
    elseif wire == 1 then
      pos = pos + 8
    elseif wire == 2 then
      local len
      len, pos = read_varint(s, pos, last)
      if not len then return nil end
      pos = pos + len
    elseif wire == 5 then
      pos = pos + 4
    else
      return nil -- groups (3/4) and unknown wire types are not used by the v2 protocol
    end
    if pos > last + 1 or field == 0 then return nil end
    if field == 1 or field == 2 then
      -- flush the run of kept fields before this one, then skip it
      if field_start > keep_from then out[#out + 1] = sub(s, keep_from, field_start - 1) end
      keep_from = pos
    end
  end
  if last >= keep_from then out[#out + 1] = sub(s, keep_from, last) end
  return concat(out)
end

local function rewrite_grpc_body(handle, internal_model)
  local body = handle:body() -- buffers the whole (unary) request body
  if body == nil then return end
  local size = body:length()
  if size < 5 then return end
  local frame = body:getBytes(0, size)
  -- gRPC frame: 1-byte compressed flag + 4-byte big-endian length + message.
  local flag, b1, b2, b3, b4 = byte(frame, 1, 5)
  if flag ~= 0 then return end -- compressed messages cannot be edited; leave as is
  local msg_len = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if 5 + msg_len ~= size then return end -- not exactly one frame; leave as is
  local msg = rewrite_message(frame, 6, size, internal_model)
  if msg == nil then
    handle:logWarn("seldon.lua: unparseable gRPC message, forwarding unchanged")
    return
  end
  local n = #msg
  body:setBytes(char(0, floor(n / 16777216) % 256, floor(n / 65536) % 256,
                     floor(n / 256) % 256, n % 256) .. msg)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path") or ""

  if headers:get("seldon-model") == nil and headers:get("x-seldon-route") == nil then
    local model = model_from_path(path)
    if model then
      headers:replace("seldon-model", model)
      -- Re-run scope + route selection with the new header (also done automatically
      -- by the Lua filter on header mutation unless clear_route_cache=false).
      handle:clearRouteCache()
    end
  end

  if GRPC_METHODS[path] then
    local ct = headers:get("content-type")
    if ct == nil or sub(ct, 1, 16) ~= "application/grpc" then return end
    local internal_model = handle:metadata():get("internal_model")
    if internal_model then
      rewrite_grpc_body(handle, internal_model)
    end
  end
end
