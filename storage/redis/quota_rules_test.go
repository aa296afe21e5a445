package redis

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/redistest"
	goredis "github.com/redis/go-redis/v9"
)

// encodeQuota packs q as quota.lua stores it (see qparse), the zero time
// as 0.
func encodeQuota(q pharox.Quota) string {
	us := func(t time.Time) string {
		if t.IsZero() {
			return "0"
		}
		return strconv.FormatInt(t.UnixMicro(), 10)
	}
	return fmt.Sprintf("%d %d %d %d %s %d %s %d %s %s %s", q.MaxConcurrentLeases, q.RequestsPerMinute, q.BytesPerDay,
		q.BytesPerMonth, us(q.Day), q.BytesToday, us(q.Month), q.BytesThisMonth,
		strconv.FormatFloat(q.Tokens, 'g', 17, 64), us(q.TokensAt), us(q.UpdatedAt))
}

// rulesScript runs one of quota.lua's rules on a quota record. ARGV: 2
// the rule, 3 the record, 4 now (us), 5 active leases (admit) or bytes
// (add), 6 subject, 7 id.
var rulesScript = func() *goredis.Script {
	var b strings.Builder
	for _, n := range []string{"lib", "quota"} {
		src, err := luaFS.ReadFile("lua/" + n + ".lua")
		if err != nil {
			panic(err)
		}
		b.Write(src)
		b.WriteByte('\n')
	}
	b.WriteString(`
local q, now, n = qparse(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rule = ARGV[2]
if rule == 'admit' then return admit(q, ARGV[6], ARGV[7], n, now) or '' end
if rule == 'take' then take(q, now) return qformat(q) end
if rule == 'add' then add_bytes(q, n, now) return qformat(q) end
if rule == 'until' then return string.format('%d', exhausted_until(q, now)) end
if rule == 'refill' then return string.format('%.17g', refill(q, now)) end
if rule == 'periods' then
  return {string.format('%d', day_start(now)), string.format('%d', month_start(now)), string.format('%d', month_end(now))}
end
return redis.error_reply('unknown rule')
`)
	return goredis.NewScript(b.String())
}()

// randomQuotaAt returns a quota as a store could hold it when an
// operation runs at now: counters of the current, an earlier or no
// period, a bucket full, emptied lately, long ago or (after a clock step
// back) in the future, and limits around the counters.
func randomQuotaAt(r *rand.Rand, now time.Time) pharox.Quota {
	q := pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: uuid.New()}
	pick := func(n int) bool { return r.IntN(n) == 0 }
	if !pick(5) {
		q.MaxConcurrentLeases = r.IntN(5)
	}
	if !pick(3) {
		q.RequestsPerMinute = 1 + r.IntN(600)
	}
	q.BytesToday = r.Int64N(1 << 40)
	q.BytesThisMonth = q.BytesToday + r.Int64N(1<<45)
	switch r.IntN(4) {
	case 0:
		q.BytesPerDay = q.BytesToday // exactly at the limit
	case 1:
		q.BytesPerDay = 1 + r.Int64N(1<<41)
	}
	switch r.IntN(4) {
	case 0:
		q.BytesPerMonth = q.BytesThisMonth
	case 1:
		q.BytesPerMonth = 1 + r.Int64N(1<<46)
	}
	switch r.IntN(4) {
	case 0: // rolled already
		q.Day, q.Month = pharox.DayStart(now), pharox.MonthStart(now)
	case 1: // yesterday's
		q.Day, q.Month = pharox.DayStart(now.AddDate(0, 0, -1)), pharox.MonthStart(now.AddDate(0, 0, -1))
	case 2: // last month's
		q.Day, q.Month = pharox.DayStart(now.AddDate(0, -1, 0)), pharox.MonthStart(now.AddDate(0, -1, 0))
	}
	if q.RequestsPerMinute > 0 {
		rpm := float64(q.RequestsPerMinute)
		switch r.IntN(5) {
		case 0: // never used
		case 1: // part of a token back
			q.Tokens, q.TokensAt = 1.5*r.Float64(), now.Add(-time.Duration(r.Int64N(int64(2*time.Minute)/int64(q.RequestsPerMinute))))
		case 2:
			q.Tokens, q.TokensAt = 1-r.Float64()*1e-6, now.Add(-time.Duration(r.Int64N(int64(time.Second))))
		case 3:
			q.Tokens, q.TokensAt = r.Float64(), now.Add(-time.Duration(r.Int64N(int64(400*24*time.Hour))))
		case 4:
			q.Tokens, q.TokensAt = r.Float64()*rpm, now.Add(time.Duration(r.Int64N(int64(time.Minute)))) // a clock step back
		}
		q.TokensAt = q.TokensAt.Truncate(time.Microsecond)
	}
	q.UpdatedAt = now.Add(-time.Hour).Truncate(time.Microsecond)
	return q
}

// randomNow returns a time in microseconds, often next to a day's or a
// month's end (December and February of leap years included).
func randomNow(r *rand.Rand) time.Time {
	base := time.Date(1990+r.IntN(120), time.Month(1+r.IntN(12)), 1, 0, 0, 0, 0, time.UTC)
	switch r.IntN(3) {
	case 0: // around the month's start
		return base.Add(time.Duration(r.Int64N(int64(2*time.Second))) - time.Second).Truncate(time.Microsecond)
	case 1: // around a day's start
		return base.AddDate(0, 0, r.IntN(28)).Add(time.Duration(r.Int64N(int64(2*time.Millisecond))) - time.Millisecond).Truncate(time.Microsecond)
	}
	return base.Add(time.Duration(r.Int64N(int64(31 * 24 * time.Hour)))).Truncate(time.Microsecond)
}

// TestQuotaRulesMatchGo checks that quota.lua's rules give exactly what
// pharox's reference rules give (Admit and its RetryAfter, TakeToken's
// tokens to the last bit, AddBytes, ExhaustedUntil, RefillTokens, and the
// day and month starts) on random quotas and times.
func TestQuotaRulesMatchGo(t *testing.T) {
	c := redistest.Client(t)
	ctx := t.Context()
	r := rand.New(rand.NewPCG(21, uint64(time.Now().UnixNano())))
	const cases = 3000
	type call struct {
		now  time.Time
		q    pharox.Quota
		n    int64
		cmds [6]*goredis.Cmd
	}
	calls := make([]call, cases)
	if err := rulesScript.Load(ctx, c).Err(); err != nil {
		t.Fatal(err)
	}
	for lo := 0; lo < cases; lo += 500 {
		_, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i := lo; i < min(lo+500, cases); i++ {
				cl := &calls[i]
				cl.now = randomNow(r)
				cl.q = randomQuotaAt(r, cl.now)
				cl.n = r.Int64N(1 << 30)
				if r.IntN(4) == 0 {
					cl.n = int64(r.IntN(6))
				}
				rec, now := encodeQuota(cl.q), cl.now.UnixMicro()
				for j, rule := range []string{"admit", "take", "add", "until", "refill", "periods"} {
					cl.cmds[j] = rulesScript.EvalSha(ctx, p, nil, "{rules}:", rule, rec, now, cl.n, string(cl.q.Subject), cl.q.SubjectID.String())
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	failures := 0
	fail := func(format string, args ...any) {
		t.Helper()
		failures++
		if failures <= 20 {
			t.Errorf(format, args...)
		}
	}
	for i, cl := range calls {
		q, now := cl.q, cl.now
		what := fmt.Sprintf("case %d, now %s, quota %q", i, now.Format(time.RFC3339Nano), encodeQuota(q))
		// Admit
		var got error
		if code := cl.cmds[0].Val().(string); code != "" {
			if qe := quotaError(code); qe != nil {
				got = qe
			} else {
				fail("%s: admit returned %q", what, code)
				continue
			}
		}
		want := q.Admit(int(cl.n), now)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			fail("%s, %d active: admit = %v, Go %v", what, cl.n, got, want)
		} else if got != nil {
			g, w := got.(*pharox.QuotaError), want.(*pharox.QuotaError)
			if *g != *w {
				fail("%s, %d active: admit = %+v, Go %+v", what, cl.n, *g, *w)
			}
		}
		// TakeToken, AddBytes: compare the records.
		for j, rule := range []struct {
			name string
			want pharox.Quota
		}{{"take", q.TakeToken(now)}, {"add", q.AddBytes(cl.n, now)}} {
			rec := cl.cmds[1+j].Val().(string)
			gotQ, err := decodeQuota(quotaField(q.Subject, q.SubjectID), rec)
			if err != nil {
				fail("%s: %s: %v", what, rule.name, err)
				continue
			}
			w := rule.want
			if gotQ.Tokens != w.Tokens || math.Signbit(gotQ.Tokens) != math.Signbit(w.Tokens) ||
				!gotQ.TokensAt.Equal(w.TokensAt) || !gotQ.Day.Equal(w.Day) || !gotQ.Month.Equal(w.Month) ||
				gotQ.BytesToday != w.BytesToday || gotQ.BytesThisMonth != w.BytesThisMonth {
				fail("%s: %s = %q, Go %q", what, rule.name, rec, encodeQuota(w))
			}
		}
		// ExhaustedUntil, RefillTokens, DayStart and MonthStart.
		until, _ := strconv.ParseInt(cl.cmds[3].Val().(string), 10, 64)
		if w := q.ExhaustedUntil(now); until == 0 != w.IsZero() || !w.IsZero() && until != w.UnixMicro() {
			fail("%s: exhausted until %d, Go %s", what, until, w)
		}
		if q.RequestsPerMinute > 0 {
			tokens, _ := strconv.ParseFloat(cl.cmds[4].Val().(string), 64)
			if w := q.RefillTokens(now); tokens != w {
				fail("%s: refill = %v, Go %v", what, tokens, w)
			}
		}
		p := cl.cmds[5].Val().([]any)
		day, _ := strconv.ParseInt(p[0].(string), 10, 64)
		month, _ := strconv.ParseInt(p[1].(string), 10, 64)
		end, _ := strconv.ParseInt(p[2].(string), 10, 64)
		if day != pharox.DayStart(now).UnixMicro() || month != pharox.MonthStart(now).UnixMicro() ||
			end != pharox.MonthStart(now).AddDate(0, 1, 0).UnixMicro() {
			fail("%s: day, month, next month = %v, Go %s %s", what, p, pharox.DayStart(now), pharox.MonthStart(now))
		}
	}
	if failures > 20 {
		t.Errorf("... %d differences in all", failures)
	}
}
