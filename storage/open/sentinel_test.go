package open

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pharox/pharox"
)

// TestParseSentinelURL checks how a redis+sentinel:// URL becomes
// go-redis's failover options.
func TestParseSentinelURL(t *testing.T) {
	o, err := parseSentinel(t, "redis+sentinel://sen:senpw@10.0.0.1,10.0.0.2:26380,10.0.0.3/mymaster/2?password=primarypw&dial_timeout=3")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.1:26379", "10.0.0.2:26380", "10.0.0.3:26379"}; !slices.Equal(o.SentinelAddrs, want) {
		t.Errorf("sentinels %v, want %v", o.SentinelAddrs, want)
	}
	if o.MasterName != "mymaster" || o.DB != 2 || o.Password != "primarypw" ||
		o.SentinelUsername != "sen" || o.SentinelPassword != "senpw" || o.DialTimeout.Seconds() != 3 || o.TLSConfig != nil {
		t.Errorf("options %+v", o)
	}
	o, err = parseSentinel(t, "rediss+sentinel://10.0.0.1/mymaster")
	if err != nil || o.TLSConfig == nil || o.DB != 0 {
		t.Errorf("rediss+sentinel: %+v, %v; want TLS and db 0", o, err)
	}
}

func parseSentinel(t *testing.T, raw string) (*goredis.FailoverOptions, error) {
	t.Helper()
	u, err := sentinelToFailoverURL(raw)
	if err != nil {
		return nil, err
	}
	return goredis.ParseFailoverURL(u)
}

// TestOpenRejectsBadSentinelURLs checks that a malformed Sentinel URL is
// refused with one sentence naming it, password hidden.
func TestOpenRejectsBadSentinelURLs(t *testing.T) {
	for _, raw := range []string{
		"redis+sentinel://:secret@10.0.0.1",               // no primary name
		"redis+sentinel://:secret@10.0.0.1/m/0/extra",     // too many segments
		"redis+sentinel://:secret@/mymaster",              // no Sentinel
		"redis+sentinel://:secret@10.0.0.1/m/x",           // bad db
		"redis+sentinel://:secret@10.0.0.1/m?nosuchopt=1", // unknown parameter
	} {
		_, err := Open(context.Background(), raw)
		if !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("Open(%s): %v, want ErrInvalidArgument", raw, err)
			continue
		}
		if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "sentinel") {
			t.Errorf("Open(%s): %q should name the sentinel URL and hide its password", raw, err)
		}
	}
}
