"""
The watchdog child while lmproxy runs: a loop of C{/bin/sh} that keeps what
lmproxy registers (the protocol of L{lmproxy.core.reaper}) and, once the
pipe closes, hands what is still registered to C{python -m
lmproxy.core.reaper}, which ends it.  A shell reading a pipe is about
1.6 MiB resident; a Python reading it was 10.7 MiB, for the whole life of
lmproxy.  Standard library only, as the reaper.
"""

from __future__ import annotations

from lmproxy.core import reaper

WAITER = r"""trap '' INT TERM
gs=' '
while IFS= read -r l || [ -n "$l" ]; do
  case $l in
    '*{"pgid": '*) v=s; p=${l#'*{"pgid": '}; p=${p%%,*} ;;
    [+-]*) v=${l%"${l#?}"}; p=${l#?} ;;
    *) continue ;;
  esac
  p=${p#"${p%%[!0]*}"}
  case $p in ''|*[!0-9]*) continue ;; esac
  case $v in
    -) unset g$p s$p
       case $gs in *" $p "*) gs="${gs%% $p *} ${gs#* $p }" ;; esac
       continue ;;
    s) eval "s$p=\$l" ;;
    *) eval "g$p=1" ;;
  esac
  case $gs in *" $p "*) ;; *) gs="$gs$p " ;; esac
done
[ "$gs" = ' ' ] && exit 0
for p in $gs; do
  eval "[ -z \"\${g$p-}\" ] || printf '+%s\n' $p; [ -z \"\${s$p-}\" ] || printf '%s\n' \"\$s$p\""
done | "$@"
"""
"""
The watchdog child while lmproxy runs, a C{/bin/sh -c} script run with
C{python -m lmproxy.core.reaper} as its arguments (see L{waiter_command}).

It reads the lines of the protocol and keeps, per process group, whether a
C{+} line registered it (C{g}PGID) and the last C{*} line of its run
(C{s}PGID; the group id read from the line's start, which L{reaper.service_line}
writes first); a C{-} line forgets both.  Only digits are ever part of a
variable's name, and a line's text is only ever assigned, never evaluated.
When the pipe closes, it writes those lines to its arguments' standard input
and waits for them: that Python parses and checks them as if it had read
the pipe itself (L{reaper.Registry}).  SIGINT and SIGTERM are ignored by both.
"""


def waiter_command(python: str) -> list[str]:
    """
    The watchdog child's command line (to be started in a session of its own).

    @param python: the Python that runs this module once lmproxy is gone.
    """
    return ["/bin/sh", "-c", WAITER, "lmproxy-watchdog", python, "-m", reaper.__name__]
