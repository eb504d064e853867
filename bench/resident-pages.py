#!/usr/bin/env python3
# usage: resident-pages.py PID BINARY — the binary's resident pages (from /proc/PID/pagemap), attributed
# to the symbol at each page's start (go tool nm) and summed by kind and package. Run as root.
import sys,struct,subprocess,collections,re
pid=int(sys.argv[1]); binpath=sys.argv[2]
maps=[]
for l in open(f'/proc/{pid}/maps'):
    p=l.split()
    if len(p)>=6 and p[5]==binpath:
        a,b=[int(x,16) for x in p[0].split('-')]; maps.append((a,b,p[1]))
pm=open(f'/proc/{pid}/pagemap','rb')
res=[]
for a,b,perm in maps:
    n=(b-a)//4096; pm.seek(a//4096*8); data=pm.read(n*8)
    for i in range(n):
        v=struct.unpack_from('<Q',data,i*8)[0]
        if v>>63 &1: res.append(a+i*4096)
print('resident pages',len(res), 'KiB',len(res)*4)
# symbols
syms=[]
for l in subprocess.run(['go','tool','nm','-size','-sort','address',binpath],capture_output=True,text=True).stdout.splitlines():
    p=l.split()
    if len(p)>=4:
        try: syms.append((int(p[0],16),int(p[1]),p[2],' '.join(p[3:])))
        except: pass
import bisect
addrs=[s[0] for s in syms]
bypkg=collections.Counter(); bysec=collections.Counter()
for pg in res:
    # attribute page to the symbol at page start (approx)
    i=bisect.bisect_right(addrs,pg)-1
    name=syms[i][3] if i>=0 else '?'; typ=syms[i][2] if i>=0 else '?'
    # package = up to last '.' before '(' etc
    m=re.match(r'^([\w\-./]*?)\.[^/]*$',name)
    pkg=m.group(1) if m else name
    bypkg[(typ,pkg)]+=1
for (t,p),c in bypkg.most_common(45): print(f'{c*4:6d} KiB {t} {p}')
