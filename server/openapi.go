package server

import (
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox/api"
)

// Version is the API version reported in the OpenAPI document.
const Version = "1.0.0"

var pathParam = regexp.MustCompile(`\{([a-z_]+)\}`)

// OpenAPI returns the OpenAPI 3.0 document of the server's routes, built
// from the same table that registers the handlers. Schemas come from the
// api package's Go types by reflection.
func (s *Server) OpenAPI() []byte {
	s.openapiOnce.Do(func() {
		doc := buildOpenAPI(s.routes, s.opts.MetricsPublic)
		b, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			panic("pharox server: marshal OpenAPI document: " + err.Error())
		}
		s.openapiDoc = b
	})
	return s.openapiDoc
}

func (s *Server) serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(s.OpenAPI())
}

type obj = map[string]any

func buildOpenAPI(routes []route, metricsPublic bool) obj {
	sg := &schemaGen{defs: obj{}}
	errorRef := sg.schema(reflect.TypeOf(api.Error{}))
	paths := obj{}
	for i := range routes {
		rt := &routes[i]
		op := obj{
			"operationId": rt.ID,
			"summary":     rt.Summary,
			"tags":        []string{rt.Tag},
		}
		if rt.Description != "" {
			op["description"] = rt.Description
		}
		role := rt.Role
		if rt.ID == "metrics" && metricsPublic {
			role = RolePublic
		}
		if role == RolePublic {
			op["security"] = []any{}
		} else {
			op["x-pharox-role"] = role.String()
			if rt.Method == http.MethodGet && role > RoleViewer && !rt.AdminOnly {
				// Viewer keys read every GET route but the admin-only ones.
				op["x-pharox-viewer"] = true
			}
		}
		var params []any
		for _, m := range pathParam.FindAllStringSubmatch(rt.Path, -1) {
			p := obj{"name": m[1], "in": "path", "required": true, "schema": obj{"type": "string"}}
			switch m[1] {
			case "pool_id":
				p["description"] = "the pool's id (UUID) or, as a convenience, its name"
			case "key_id":
				p["description"] = "the key's id (UUID) or its name"
			case "subject":
				p["schema"] = obj{"type": "string", "enum": []string{"consumer", "pool", "proxy"}}
				p["description"] = "what the quota limits"
			case "name_or_id":
				p["description"] = "a consumer's or pool's name or id (UUID), or a proxy's id"
			default:
				p["schema"] = obj{"type": "string", "format": "uuid"}
			}
			params = append(params, p)
		}
		for _, q := range rt.Query {
			sch := obj{"type": q.Type}
			if q.Format != "" {
				sch["format"] = q.Format
			}
			in := q.In
			if in == "" {
				in = "query"
			}
			p := obj{"name": q.Name, "in": in, "required": false, "schema": sch}
			if q.Description != "" {
				p["description"] = q.Description
			}
			params = append(params, p)
		}
		if params != nil {
			op["parameters"] = params
		}
		if rt.Request != nil {
			op["requestBody"] = obj{
				"required": !rt.BodyOptional,
				"content":  obj{"application/json": obj{"schema": sg.schema(reflect.TypeOf(rt.Request))}},
			}
		}
		responses := obj{}
		ok := obj{"description": http.StatusText(rt.Status)}
		switch {
		case rt.Response != nil:
			ok["content"] = obj{"application/json": obj{"schema": sg.schema(reflect.TypeOf(rt.Response))}}
		case rt.ID == "metrics":
			ok["content"] = obj{"text/plain": obj{"schema": obj{"type": "string"}}}
		case rt.ID == "openapi":
			ok["content"] = obj{"application/json": obj{"schema": obj{"type": "object"}}}
		}
		responses[strconv.Itoa(rt.Status)] = ok
		errs := append([]int{}, rt.Errors...)
		if role != RolePublic {
			errs = append(errs, 401, 403)
		}
		if rt.Request != nil {
			errs = append(errs, 400, 413)
		}
		if rt.Request != nil || len(rt.Query) > 0 || strings.Contains(rt.Path, "{") {
			errs = append(errs, 422)
		}
		if rt.api != nil {
			// 503 (with Retry-After): the store is unavailable for now.
			errs = append(errs, 500, 503)
		}
		for _, code := range errs {
			responses[strconv.Itoa(code)] = obj{
				"description": http.StatusText(code),
				"content":     obj{"application/json": obj{"schema": errorRef}},
			}
		}
		op["responses"] = responses
		item, _ := paths[rt.Path].(obj)
		if item == nil {
			item = obj{}
			paths[rt.Path] = item
		}
		item[strings.ToLower(rt.Method)] = op
	}
	return obj{
		"openapi": "3.0.3",
		"info": obj{
			"title":   "pharox",
			"version": Version,
			"description": "Lease, manage and monitor pools of network proxies. Errors are JSON {\"detail\": \"...\"}; " +
				"timestamps are ISO 8601 with a +00:00 offset. Collection paths end in a slash; the same path " +
				"without it answers 307 to it.",
		},
		"servers":  []any{obj{"url": "/"}},
		"paths":    paths,
		"security": []any{obj{"apiKey": []string{}}},
		"components": obj{
			"schemas": sg.defs,
			"securitySchemes": obj{
				"apiKey": obj{"type": "apiKey", "in": "header", "name": APIKeyHeader},
			},
		},
	}
}

// schemaGen derives JSON schemas from Go types, as encoding/json would
// marshal them.
type schemaGen struct{ defs obj }

var (
	timeType = reflect.TypeOf(api.Time{})
	uuidType = reflect.TypeOf(uuid.UUID{})
	durType  = reflect.TypeOf(time.Duration(0))
)

func (g *schemaGen) schema(t reflect.Type) obj {
	switch t {
	case timeType:
		return obj{"type": "string", "format": "date-time", "example": "2026-01-01T00:05:00+00:00"}
	case uuidType:
		return obj{"type": "string", "format": "uuid"}
	case durType:
		return obj{"type": "integer", "description": "nanoseconds"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		s := g.schema(t.Elem())
		if _, isRef := s["$ref"]; !isRef {
			s["nullable"] = true
		}
		return s
	case reflect.String:
		return obj{"type": "string"}
	case reflect.Bool:
		return obj{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return obj{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return obj{"type": "number"}
	case reflect.Slice, reflect.Array:
		return obj{"type": "array", "items": g.schema(t.Elem())}
	case reflect.Map:
		return obj{"type": "object", "additionalProperties": g.schema(t.Elem())}
	case reflect.Struct:
		if t.Name() == "" {
			return g.structSchema(t)
		}
		name := t.Name()
		ref := obj{"$ref": "#/components/schemas/" + name}
		if _, done := g.defs[name]; !done {
			g.defs[name] = obj{} // placeholder for recursive types
			g.defs[name] = g.structSchema(t)
		}
		return ref
	}
	return obj{}
}

// requestRequired lists the fields a request body must carry; the
// struct tags cannot say it, since optional request fields are not always
// omitempty.
var requestRequired = map[reflect.Type][]string{
	reflect.TypeOf(api.CreatePoolRequest{}):     {"name"},
	reflect.TypeOf(api.CreateProxyRequest{}):    {"host", "port"},
	reflect.TypeOf(api.ImportProxiesRequest{}):  {"proxies"},
	reflect.TypeOf(api.UpdateProxyRequest{}):    {"status"},
	reflect.TypeOf(api.CreateConsumerRequest{}): {"name"},
	reflect.TypeOf(api.RenewRequest{}):          {"ttl_seconds"},
	reflect.TypeOf(api.OutcomeRequest{}):        {"kind"},
	reflect.TypeOf(api.AcquireRequest{}):        nil,
	reflect.TypeOf(api.SweepRequest{}):          nil,
	reflect.TypeOf(api.ReleaseRequest{}):        nil,
	reflect.TypeOf(api.QuotaLimits{}):           nil,
}

func (g *schemaGen) structSchema(t reflect.Type) obj {
	props := obj{}
	var required []string
	explicit, isRequest := requestRequired[t]
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		if f.Type.Kind() == reflect.Func || f.Type.Kind() == reflect.Chan {
			continue
		}
		props[name] = g.schema(f.Type)
		// Answers always carry the fields that are not omitempty.
		if !isRequest && !strings.Contains(tag, "omitempty") && !strings.Contains(tag, "omitzero") {
			required = append(required, name)
		}
	}
	if isRequest {
		required = explicit
	}
	out := obj{"type": "object", "properties": props}
	if len(required) > 0 {
		out["required"] = required
	}
	return out
}
