# How the subprocess backend starts a child: `python -u -c <this file>
# <n> <worker.py source, in n pieces> <cache prefix> [--share-cores] <reply
# ring path>`; the rest are the worker's own (see PROTOCOL.md), and the path
# may be empty. The source comes in pieces cut at line ends, because Linux
# refuses any one argument past 128 KiB. Compiling the worker takes tens of
# milliseconds, longer than the rest of a start, so the compiled code is kept
# (marshal) under the cache prefix, one file per interpreter version; an empty
# prefix means no cache. The file name given to compile() keeps the worker's
# own frames apart from user code's "<string>" in tracebacks.
import sys, marshal
# `-c` put the working folder first on sys.path: no module of the worker's
# is to be found there (a sandboxed child's folder is not yet its own).
if sys.path and sys.path[0] == '':
    del sys.path[0]
source = ''.join([sys.argv.pop(1) for _ in range(int(sys.argv.pop(1)))])
cache = sys.argv.pop(1)
__file__ = 'async_py/worker.py'
code = None
if cache:
    cache = '%s-%s-%x.bin' % (cache, sys.implementation.cache_tag, sys.hexversion)
    try:
        with open(cache, 'rb') as cached:
            code = marshal.load(cached)
    except Exception:
        pass
if code is None:
    code = compile(source, __file__, 'exec')
    if cache:
        try:
            import os
            partial = '%s.%d' % (cache, os.getpid())
            with open(partial, 'wb') as cached:
                marshal.dump(code, cached)
            os.replace(partial, cache)
        except Exception:
            pass
# Python 3.13 files the text of `-c` (this file) under "<string>", the name
# user code runs under too: its tracebacks would quote lines from here.
if 'linecache' in sys.modules:
    sys.modules['linecache'].cache.pop('<string>', None)
del source, cache
exec(code)
