package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
)

// Every filter term is evaluated against every candidate proxy while the
// store chooses (under the memory store's lock), so a wide filter from one
// consumer could stall every other request. The service rejects it.
func TestAcquireRejectsOversizedFilters(t *testing.T) {
	s := New(pharox.NewManager(testfactory.Memory(t)), Options{DisableAuth: true})
	for name, filters := range map[string]string{
		"any_of": `{"any_of":[` + strings.Repeat(`{"city":"Z"},`, pharox.MaxFilterTerms) + `{"city":"Z"}]}`,
		"tags":   `{"tags":[` + strings.Repeat(`"t",`, pharox.MaxFilterTerms) + `"t"]}`,
	} {
		rec := httptest.NewRecorder()
		body := `{"pool_name":"p","filters":` + filters + `}`
		s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/leases/", strings.NewReader(body)))
		if rec.Code != http.StatusUnprocessableEntity || !strings.Contains(strings.ToLower(rec.Body.String()), "filters") {
			t.Errorf("%s: status %d %s; want 422 naming the filters", name, rec.Code, strings.TrimSpace(rec.Body.String()))
		}
	}
}
